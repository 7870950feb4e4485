"""The hooks a plugin may implement.

Every hook receives a ``register`` callable and hands objects to it; fm9g then calls methods on
those objects. No hook is ever called per sample. Each registered object carries ``name``,
``description`` (one line) and ``options_schema`` (a JSON Schema for its options); the plugin
manager adds the version and distribution it came from. See ``fm9g/core/protocols.py`` for the
methods each kind must provide and ``docs/plugins.md`` for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("fm9g")

Register = Callable[[Any], None]


@hookspec
def register_adapters(register: Register) -> None:
    """Register dataset adapters: objects that turn raw items into ``{"input", "output"}`` records.

    Call ``register(adapter)`` once per adapter. An adapter implements
    :class:`fm9g.core.protocols.Adapter`: it declares whether it reads text lines or JSON values
    and converts a stream of them into records or counted skips. Names must be unique across
    all installed plugins.
    """


@hookspec
def register_transforms(register: Register) -> None:
    """Register record transforms (chat templates and the like) used by mix manifests.

    Call ``register(transform)`` once per transform. A transform implements
    :class:`fm9g.core.protocols.Transform`: ``bind(options)`` validates nothing itself (fm9g has
    already validated ``options`` against ``options_schema``) and returns a function
    ``(record, num_sample, rng) -> record`` that must be deterministic given its arguments.
    """


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizer factories, selected by a spec string ``NAME[:ARGUMENT]``.

    Call ``register(factory)`` once per factory. A factory implements
    :class:`fm9g.core.protocols.TokenizerFactory`: ``load(argument)`` returns a
    :class:`fm9g.core.protocols.Tokenizer`, or raises :class:`fm9g.core.errors.Fm9gError` naming
    what is missing. ``aliases`` lists other accepted spec prefixes (``sp`` for ``sentencepiece``).
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register trainer backends (``torch``, ``bmtrain``, ...) selected by a train config's ``backend``.

    Call ``register(backend)`` once per backend. A backend implements
    :class:`fm9g.core.protocols.Backend`: ``train(config, run)`` runs the training loop for a
    validated train config.
    """


@hookspec
def register_delta_engines(register: Register) -> None:
    """Register delta-tuning (LoRA) engines selected by a train config's ``delta.engine``.

    Call ``register(engine)`` once per engine. An engine implements
    :class:`fm9g.core.protocols.DeltaEngine`: it wraps a model with LoRA modules, marks only
    those trainable, and reads and writes their tensors.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment trackers selected by a train config's ``report_to`` (``tensorboard``,
    ``mlflow`` and ``wandb`` are built in).

    Call ``register(logger)`` once per tracker. A logger implements ``open(run, options)``: ``run``
    is a :class:`fm9g.backends.training.trackers.TrackerRun` (save directory, run name, resolved train
    config, mixture plan, resume step) and ``options`` the entry's validated options; it returns a
    session with ``log_scalars(scalars, step)`` (every step's and evaluation's finite scalars, the
    tags TensorBoard gets), ``flush(step)`` (before each checkpoint: make what was logged durable,
    where the tracker can) and ``close()`` (once, also when training fails). Only rank 0 opens
    trackers. A logger may list ``requires``, ``(module, fm9g extra)`` pairs, so that a missing
    package is reported with its install command when the config is read.
    """
