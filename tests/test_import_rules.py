"""The package's import rules (import-linter contracts in pyproject.toml) hold, and would catch a break.

The mutation tests copy the package, add one offending import inside a function (grimp counts those
too), and check that ``lint-imports`` then fails and names the broken contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(project: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=120)


def test_the_import_rules_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "offending_import", "contract"), [
    ("backends/weights/names.py", "from fm9g.backends.training import loop", "backends: a room"),
    ("backends/torch_backend/training.py", "from fm9g.backends.bmtrain_backend import runtime",
     "backends: a room"),
    ("backends/training/model.py", "from fm9g.backends.lora import peft_engine", "via the plugin registry"),
    ("index/reader.py", "from fm9g.mixer import stream", "pipeline:"),
    ("backends/training/loss.py", "from fm9g.backends.training import loop", "no import cycle"),
], ids=["upward", "backend-to-backend", "training-to-lora", "pipeline-upward", "cycle"])
def test_an_offending_function_local_import_breaks_a_contract(tmp_path, module, offending_import, contract):
    shutil.copytree(ROOT / "fm9g", tmp_path / "fm9g", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "fm9g" / module, "a", encoding="utf-8") as handle:
        handle.write(f"\n\ndef _offending():\n    {offending_import}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
