#!/usr/bin/env bash
# The GPU checks in one command: the tests in tests/gpu and the training benchmark.
# Results go to $OUT (default ./gpu-results): gpu-tests.xml, gpu_results.json, train_bench.json/.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
python -m pytest tests/gpu -v -rs --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
tests_status=${PIPESTATUS[0]}
python benchmarks/train_bench.py ${BENCH_ARGS:-} --output "$OUT/train_bench.json" 2>&1 | tee "$OUT/train_bench.txt"
bench_status=${PIPESTATUS[0]}
exit $(( tests_status || bench_status ))
