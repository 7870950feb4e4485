"""fm9g: weighted, tokenized, packed training streams and causal-LM training, built from plugins."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("fm9g")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("fm9g")
"""Decorator for plugin hook implementations: ``@fm9g.hookimpl def register_adapters(register): ...``."""

__all__ = ["__version__", "hookimpl"]
