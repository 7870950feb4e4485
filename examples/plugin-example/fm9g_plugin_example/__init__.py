"""fm9g-plugin-example: one adapter (``tsv-qa``) and one transform (``llama2-chat``).

fm9g loads this module through the ``fm9g`` entry point in ``pyproject.toml`` and calls the
``@fm9g.hookimpl`` functions below once, handing them a ``register`` callable.
"""

from __future__ import annotations

import fm9g
from fm9g_plugin_example.llama2_chat import Llama2ChatTransform
from fm9g_plugin_example.tsv_qa import TsvQaAdapter

__all__ = ["Llama2ChatTransform", "TsvQaAdapter", "register_adapters", "register_transforms"]


@fm9g.hookimpl
def register_adapters(register):
    register(TsvQaAdapter())


@fm9g.hookimpl
def register_transforms(register):
    register(Llama2ChatTransform())
