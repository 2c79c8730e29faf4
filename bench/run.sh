#!/usr/bin/env bash
# Reruns the measurement quoted in README.md: every default case at 1 and 2
# threads against NumPy, PyTorch and ONNX Runtime, with the machine's copy
# bandwidth. Writes bench/latest.txt (the table) and
# bench/latest.json (raw samples and environment). Extra arguments go to
# fastnorm-bench.
set -euo pipefail
cd "$(dirname "$0")"
fastnorm-bench --threads 1,2 --repeat 21 --json latest.json --plot latest.png "$@" | tee latest.txt
python3 update_readme.py
