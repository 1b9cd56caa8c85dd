#!/usr/bin/env bash
# Run every FD-SM experiment config in experiments/sm/ (from the repository root), one after the
# other in two lanes (NICE, NCSN and the deep EBM in one, DKEF and the 2-D toys in the other),
# one thread each.
# Each run is also reproducible alone: jacfree train --config experiments/sm/NAME.toml
# Logs: runs/sm/logs/NAME.log; results: runs/sm/NAME/results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
JACFREE="${JACFREE:-jacfree}"
command -v "$JACFREE" >/dev/null || JACFREE="python -m jacfree"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p runs/sm/logs
lane() {
  for cfg in "$@"; do
    name=$(basename "$cfg" .toml)
    if [ -f "runs/sm/$name/results.json" ]; then echo "skip $name (done)"; continue; fi
    echo "run $name"
    $JACFREE train --config "$cfg" > "runs/sm/logs/$name.log" 2>&1 || echo "FAILED $name"
  done
}
lane experiments/sm/nice-*.toml experiments/sm/ncsn-*.toml experiments/sm/ebm-*.toml &
lane experiments/sm/dkef-*.toml experiments/sm/energy-*.toml &
wait
