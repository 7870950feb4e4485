#!/usr/bin/env bash
# Install fm9g with its test extras and first-party plugins into the active environment, then test.
# torch is pinned to the CPU wheel the CI machine has on disk (a bare "torch" pulls a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 -e '.[test]'
python -m pytest -n 2 -q "$@"
