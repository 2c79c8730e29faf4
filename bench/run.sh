#!/usr/bin/env bash
# Reruns the measurement quoted in README.md: every default case at 1 and 2
# threads against NumPy and PyTorch. Writes bench/latest.txt (the table) and
# bench/latest.json (raw samples and environment). Extra arguments go to
# fastnorm-bench.
set -euo pipefail
cd "$(dirname "$0")"
fastnorm-bench --threads 1,2 --repeat 21 --json latest.json "$@" | tee latest.txt
python3 update_readme.py
