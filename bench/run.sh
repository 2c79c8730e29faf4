#!/usr/bin/env bash
# Reruns the measurements quoted in README.md: every default case at 1 and 2
# threads against NumPy, PyTorch and ONNX Runtime, with the machine's copy
# bandwidth, in float32 (bench/latest.txt, raw samples in bench/latest.json)
# and on bfloat16 and float16 data (bench/latest_bfloat16.txt,
# bench/latest_float16.txt: the same peers in the same dtype, plus fastnorm's
# float32 call on the upcast data); then the norm layers of published models
# end to end (fastnorm-bench --models, bench/latest_models.txt) and the
# per-call cost of tiny calls (per_call.py, bench/latest_per_call.txt). Extra
# arguments go to every fastnorm-bench run.
set -euo pipefail
cd "$(dirname "$0")"
fastnorm-bench --threads 1,2 --repeat 21 --json latest.json --plot latest.png "$@" | tee latest.txt
for dt in bfloat16 float16; do
    fastnorm-bench --threads 1,2 --repeat 21 --dtype "$dt" --json "latest_$dt.json" "$@" \
        | tee "latest_$dt.txt"
done
fastnorm-bench --models --threads 1,2 --repeat 11 --json latest_models.json "$@" \
    | tee latest_models.txt
python3 per_call.py | tee latest_per_call.txt
python3 update_readme.py
