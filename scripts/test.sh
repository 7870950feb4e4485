#!/usr/bin/env bash
# The README's test command: install fm9g with its test extras, the first-party plugin packages and
# OpenDelta (for the `opendelta` engine's tests) into the active environment, then run the tests.
# torch is pinned to the CPU wheel the CI machine has on disk (a bare "torch" pulls a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 -e '.[test,opendelta]' -e plugins/fm9g-alpaca -e plugins/fm9g-medical-o1
scripts/install_opendelta.sh
python -m pytest -n 2 -q "$@"
