"""Building the plugin registry imports no torch/transformers/peft: the backends and delta engines
register light plugin classes and import their training code on first use."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "safetensors", "opendelta")


def test_registry_imports_no_heavy_library():
    code = ("import fm9g.core.plugins as p, sys; r = p.registry(); "
            "assert {'torch', 'bmtrain'} <= set(r.names('backend')), r.names('backend'); "
            "assert {'peft', 'opendelta'} <= set(r.names('delta_engine')), r.names('delta_engine'); "
            f"loaded = [m for m in {HEAVY!r} if m in sys.modules]; assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_plugins_command_imports_no_torch():
    code = ("import sys; from fm9g.cli import main; code = main(['plugins']); "
            "assert code == 0; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "bmtrain" in done.stdout and "opendelta" in done.stdout
