"""A transformers model holding exactly the given tensors, built without random init or a second copy.

:func:`materialize_model` builds the model on the meta device and assigns the tensors
(``load_state_dict(assign=True)``) after :func:`check_state_dict` has named any missing,
unexpected or mis-shaped key — the converters and ``fm9g export`` use it, so a 7B export costs one
copy of the weights, not three.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch

MAX_LISTED = 5
"""How many offending keys an error lists."""


def meta_model(config, *, trust_remote_code: bool = False):
    """The causal-LM for ``config`` with every tensor on the meta device (costs no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _tied_duplicates(model) -> set[str]:
    """State-dict names that share their tensor with an earlier name (e.g. a tied ``lm_head.weight``)."""
    seen: dict[int, str] = {}
    duplicates: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            duplicates.add(name)
        else:
            seen[id(tensor)] = name
    return duplicates


def _listing(names: list[str], display: Callable[[str], str]) -> str:
    shown = ", ".join(f"'{display(name)}'" for name in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model,
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
    architecture: str = "the model",
) -> None:
    """Raise ``Fm9gError`` naming the key for any missing, unexpected or wrongly shaped tensor.

    ``display`` maps an HF name back to the name the user's file uses (e.g. the seed's)."""
    expected = model.state_dict()
    optional = _tied_duplicates(model)
    fix = "check that --preset/--config describes the model this checkpoint was trained as"
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise Fm9gError(f"unexpected key(s) for {architecture}: {_listing(unexpected, display)}",
                        where=where, fix=fix)
    for name, tensor in state_dict.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise Fm9gError(
                f"'{display(name)}' has shape {tuple(tensor.shape)} but {architecture} expects {want}",
                where=where,
                fix=fix,
            )
    missing = sorted(set(expected) - set(state_dict) - optional)
    if missing:
        raise Fm9gError(f"missing key(s) for {architecture}: {_listing(missing, display)}", where=where, fix=fix)


def _materialize_meta_buffers(model) -> None:
    """Give non-persistent buffers left on the meta device (rotary ``inv_freq``) their real values.

    They are not in any state dict; transformers computes them in the owning module's init, which
    ``_init_weights`` re-runs for exactly those modules."""
    import torch

    owners = []
    for module in model.modules():
        names = [name for name, buffer in module.named_buffers(recurse=False) if buffer is not None and buffer.is_meta]
        for name in names:
            buffer = getattr(module, name)
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, torch.empty_like(buffer, device="cpu"), persistent=persistent)
        if names:
            owners.append(module)
    with torch.no_grad():
        for module in owners:
            model._init_weights(module)
    leftover = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
    if leftover:
        raise Fm9gError(f"tensors left uninitialized: {leftover[:MAX_LISTED]}", where="model construction",
                        fix="this architecture is not supported by fm9g's converters")


def materialize_model(
    config,
    state_dict: Mapping[str, torch.Tensor],
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
    architecture: str | None = None,
    trust_remote_code: bool = False,
):
    """A model for ``config`` holding exactly ``state_dict``'s tensors (their dtype; checked first).

    Built on the meta device, then ``load_state_dict(assign=True)``, so a 7B preset costs no random
    init and no second copy of the weights."""
    model = meta_model(config, trust_remote_code=trust_remote_code)
    architecture = architecture or f"{type(model).__name__} config"
    check_state_dict(state_dict, model, where=where, display=display, architecture=architecture)
    tied = _tied_duplicates(model)
    model.load_state_dict(dict(state_dict), strict=False, assign=True)
    if tied:
        model.tie_weights()
    _materialize_meta_buffers(model)
    dtypes = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        model.config.dtype = dtypes.pop()
    return model.eval()

