#!/usr/bin/env bash
# Run every SNF experiment config in experiments/snf/ (from the repository root) in two lanes,
# one thread each: the exact CNN (the long one: 9 float64 slogdets of 784x784 matrices per step)
# alone, everything else one after the other in the second lane. Then print the result table.
# Each run is also reproducible alone: jacfree train --config experiments/snf/NAME.toml
# Logs: runs/snf/logs/NAME.log; results: runs/snf/NAME/results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
JACFREE="${JACFREE:-jacfree}"
command -v "$JACFREE" >/dev/null || JACFREE="python -m jacfree"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p runs/snf/logs
lane() {
  for name in "$@"; do
    if [ -f "runs/snf/$name/results.json" ]; then echo "skip $name (done)"; continue; fi
    echo "run $name"
    $JACFREE train --config "experiments/snf/$name.toml" > "runs/snf/logs/$name.log" 2>&1 \
      || echo "FAILED $name"
  done
}
lane cnn-exact &
lane cnn-selfnorm fc-exact fc-selfnorm glow-selfnorm glow-exact &
wait
python experiments/snf/summarize.py
