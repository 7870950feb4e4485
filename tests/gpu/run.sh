#!/usr/bin/env bash
# The GPU checks in one command: set-up, the tests in tests/gpu, and the training benchmark.
#
# Set-up (each step skipped when already done): fm9g from this source tree on PYTHONPATH (no install);
# wheels carried in .whl/ for modules the GPU machine lacks (jsonschema, tensorboardX, torchao, ...); BMTrain
# built for the local GPU from .whl/bmtrain-1.0.1.tar.gz with `fm9g install-bmtrain` unless
# `import bmtrain` already works.
#
# Results go to $OUT (default ./gpu-results): setup.txt, gpu-tests.xml/.txt, gpu_results.json,
# train_bench.json/.txt. Knobs: TESTS (default tests/gpu), PYTEST_ARGS, BENCH_ARGS (e.g.
# "--only full:bmtrain,full:hf"), SKIP_TESTS=1, SKIP_BENCH=1, SKIP_BMTRAIN=1 (no BMTrain build).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "python: $(python -c 'import sys; print(sys.version.split()[0])'), fm9g from $PWD"
  if ! python -c "import jsonschema, tensorboardX, yaml, torchao" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing carried wheels (--no-deps): $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    python -m pip install --no-deps --no-index --quiet .whl/*.whl || echo "warning: installing carried wheels failed"
  fi
  if [ "${SKIP_BMTRAIN:-0}" = 1 ]; then
    echo "bmtrain: not built (SKIP_BMTRAIN=1): the bmtrain tests and rows will be skipped"
  elif python -c "import bmtrain" 2>/dev/null; then
    echo "bmtrain: already importable ($(python -c 'import bmtrain, os; print(os.path.dirname(bmtrain.__file__))'))"
  elif [ -f .whl/bmtrain-1.0.1.tar.gz ]; then
    echo "bmtrain: building from .whl/bmtrain-1.0.1.tar.gz"
    start=$(date +%s)
    python -m fm9g install-bmtrain --sdist .whl/bmtrain-1.0.1.tar.gz && echo "bmtrain: built in $(( $(date +%s) - start )) s"
  else
    echo "bmtrain: not installed and no .whl/bmtrain-1.0.1.tar.gz: the bmtrain tests and rows will be skipped"
  fi
} 2>&1 | tee "$OUT/setup.txt"

tests_status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  python -m pytest ${TESTS:-tests/gpu} -v -rs ${PYTEST_ARGS:-} --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
  tests_status=${PIPESTATUS[0]}
fi
bench_status=0
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  python benchmarks/train_bench.py ${BENCH_ARGS:-} --output "$OUT/train_bench.json" 2>&1 | tee "$OUT/train_bench.txt"
  bench_status=${PIPESTATUS[0]}
fi
exit $(( tests_status || bench_status ))
