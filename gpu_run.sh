#!/usr/bin/env bash
# GPU measurements for docs/gpu.md (run from the repository root on a CUDA machine).
set -u
export PYTHONPATH=src
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
python -c "import torch, numpy, tqdm; print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/env.txt"
python -c "import matplotlib" 2>/dev/null && PLOT="" || PLOT="--no-plot"
run() { local name=$1; shift; echo "== $name"; timeout "${T:-280}" python -m jacfree bench "$@" $PLOT --quiet --out "$OUT/$name" > "$OUT/$name.txt" 2>&1; echo "rc=$?"; tail -25 "$OUT/$name.txt"; }
