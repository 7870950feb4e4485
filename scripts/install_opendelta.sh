#!/usr/bin/env bash
# Install OpenDelta 0.3.2 (the seed's LoRA library) into the active Python environment, for fm9g's
# `opendelta` delta engine. Plain `pip install opendelta` fails today (it requires the deprecated
# `sklearn` package) and would pull ~30 packages fm9g never uses (DeltaCenter hub client, Aliyun SDK,
# datasets, scipy, ...), so OpenDelta itself goes in without its declared dependencies, and only the
# packages that `import opendelta` really loads are installed: web.py and pyyaml (the same list as
# the `opendelta` extra in pyproject.toml). What still breaks on current transformers is bridged at
# run time by fm9g/backends/lora/opendelta_bridge.py (docs/opendelta.md).
#
# Usage: scripts/install_opendelta.sh [extra pip options, e.g. --no-index --find-links WHEELS_DIR]
# PYTHON selects the interpreter (default: python). After it, pip reports OpenDelta's unmet declared
# requirements (sklearn, delta-center-client, ...) as a dependency conflict: expected and harmless.
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install -q "$@" "web.py>=0.62" "pyyaml>=5.1"
"$PYTHON" -m pip install -q --no-deps "$@" "opendelta==0.3.2"
if "$PYTHON" -c "import fm9g" 2>/dev/null; then
  "$PYTHON" -c "from fm9g.backends.lora.opendelta_bridge import import_opendelta; import_opendelta(); print('opendelta engine ready')"
fi
