"""Make OpenDelta 0.3.2 (the seed's LoRA library, last released 2023) import on today's stack.

OpenDelta's own files are never edited. :func:`import_opendelta` installs a few small bridges into
``sys.modules`` / module namespaces, each only when the thing OpenDelta imports is really missing,
then imports ``opendelta``. It is called by the ``opendelta`` delta engine when a run uses it, never
when fm9g itself is imported.

What is bridged, and why (checked with OpenDelta 0.3.2 on transformers 4.44, 5.17 and 5.24, torch
2.11 and 2.13, Python 3.11 and 3.12):

``transformers.deepspeed``
    ``opendelta/basemodel.py`` does ``from transformers.deepspeed import deepspeed_config,
    is_deepspeed_zero3_enabled``. transformers moved that module to
    ``transformers.integrations.deepspeed`` (4.34) and removed the old path (4.46). The bridge
    registers the new module under the old name. Needed on transformers >= 4.46.

``MultiHeadSelfAttention`` in ``transformers.models.distilbert.modeling_distilbert``
    ``opendelta/delta_models/prefix.py`` imports it (for prefix tuning on DistilBERT). transformers 5
    renamed the class ``DistilBertSelfAttention``; the bridge adds the old name as an alias of the
    new class. Needed on transformers >= 5.0. LoRA never touches it.

``DeltaCenter``
    ``opendelta/utils/saving_loading_utils.py`` does ``from DeltaCenter import OssClient`` at import
    time, for pushing deltas to OpenDelta's online hub. Its distribution (delta-center-client 0.0.4)
    needs ``pkg_resources`` (gone from setuptools >= 81) and ``oss2`` (an sdist that pulls the Aliyun
    SDK). When it cannot be imported, a stand-in module is registered whose ``OssClient`` raises a
    clear error if anything tries to use the hub. fm9g never does: it saves LoRA tensors itself.

``turtle``
    ``opendelta/basemodel.py`` has a stray ``from turtle import back`` (an editor auto-import; the
    name is never used). ``turtle`` needs tkinter, which slim Python builds lack. Only when it cannot
    be imported, a stand-in ``turtle`` module with that one name is registered.

The remaining runtime imports of ``import opendelta`` are real packages: ``web.py`` (its interactive
module picker) and ``pyyaml``; install them with ``scripts/install_opendelta.sh`` or the
``fm9g[opendelta]`` extra plus ``pip install --no-deps opendelta==0.3.2`` (docs/opendelta.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from fm9g.core.errors import Fm9gError

OPENDELTA_VERSION = "0.3.2"
"""The OpenDelta release these bridges were written and tested for."""

INSTALL_COMMAND = (
    "bash scripts/install_opendelta.sh (from an fm9g checkout), or: "
    "pip install 'fm9g[opendelta]' && pip install --no-deps opendelta==0.3.2"
)
"""How to install OpenDelta on today's stack (plain ``pip install opendelta`` fails: see docs/opendelta.md)."""

_applied: list[str] = []
_bridged = False


def _importable(module_name: str) -> bool:
    try:
        importlib.import_module(module_name)
    except ImportError:
        return False
    return True


def _bridge_transformers_deepspeed() -> str | None:
    if _importable("transformers.deepspeed"):
        return None
    sys.modules["transformers.deepspeed"] = importlib.import_module("transformers.integrations.deepspeed")
    return "transformers.deepspeed -> transformers.integrations.deepspeed"


def _bridge_distilbert_attention() -> str | None:
    distilbert = importlib.import_module("transformers.models.distilbert.modeling_distilbert")
    if hasattr(distilbert, "MultiHeadSelfAttention"):
        return None
    distilbert.MultiHeadSelfAttention = distilbert.DistilBertSelfAttention
    return "distilbert MultiHeadSelfAttention -> DistilBertSelfAttention"


class _DeltaCenterUnavailable:
    """Stands in for DeltaCenter's ``OssClient``: any use names what is missing."""

    def __getattr__(self, name: str) -> Any:
        raise Fm9gError(
            f"OpenDelta's DeltaCenter hub client is not installed (OssClient.{name} was used)",
            fix="fm9g saves LoRA tensors itself; to use OpenDelta's online hub, "
            "pip install delta-center-client==0.0.4 oss2 'setuptools<81'",
        )


def _bridge_delta_center() -> str | None:
    if _importable("DeltaCenter"):
        return None
    stand_in = types.ModuleType("DeltaCenter", "fm9g stand-in: OpenDelta's hub client is not installed")
    stand_in.OssClient = _DeltaCenterUnavailable()
    sys.modules["DeltaCenter"] = stand_in
    return "DeltaCenter stand-in (hub client not installed)"


def _bridge_turtle() -> str | None:
    if _importable("turtle"):
        return None

    def back(distance: float) -> None:
        raise Fm9gError("turtle graphics are not available in this Python (no tkinter)")

    stand_in = types.ModuleType("turtle", "fm9g stand-in: this Python has no tkinter")
    stand_in.back = back
    sys.modules["turtle"] = stand_in
    return "turtle stand-in (no tkinter)"


_BRIDGES = (
    _bridge_transformers_deepspeed,
    _bridge_distilbert_attention,
    _bridge_delta_center,
    _bridge_turtle,
)


def apply_bridges() -> list[str]:
    """Install every bridge this environment needs (idempotent); return what was bridged."""
    global _bridged
    if not _bridged:
        _applied.extend(applied for applied in (bridge() for bridge in _BRIDGES) if applied)
        _bridged = True
    return list(_applied)


def _not_installed() -> Fm9gError:
    return Fm9gError(
        "the 'opendelta' delta engine needs OpenDelta, which is not installed",
        fix=f"install with: {INSTALL_COMMAND}",
    )


def import_opendelta() -> types.ModuleType:
    """Apply the bridges and import ``opendelta``; a missing install is an :class:`Fm9gError`."""
    try:
        installed = importlib.util.find_spec("opendelta") is not None
    except ValueError:
        installed = False
    if not installed:
        raise _not_installed()
    apply_bridges()
    try:
        return importlib.import_module("opendelta")
    except ModuleNotFoundError as missing:
        if missing.name == "opendelta":
            raise _not_installed() from missing
        raise Fm9gError(
            f"OpenDelta {OPENDELTA_VERSION} needs the package '{missing.name}', which is not installed",
            fix=f"install with: {INSTALL_COMMAND}",
        ) from missing
