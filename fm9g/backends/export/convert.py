"""``fm9g convert``: the seed's bmtrain ``.pt`` checkpoints <-> Hugging Face directories, and seed LoRA merges.

* ``pt2hf``: a seed ``.pt`` (optionally with a seed LoRA folded in) -> an HF directory, the
  architecture from a preset or a reference ``config.json``;
* ``hf2pt``: an HF directory -> a seed ``.pt`` with the seed's parameter names;
* ``merge-lora``: a seed (OpenDelta) LoRA folded into a seed ``.pt`` or an HF directory, as the
  seed's ``bmtrain_2_hgface.py --lora-ckpt-path`` does.

Names map by the seed's ordered renaming rules (:mod:`fm9g.backends.weights.names`), so a round trip
is exact; every key and shape is checked against the target architecture before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from fm9g.backends.export.output import (ExportReport, cast_state, check_output_free, copy_remote_code,
                                         refuse_nested, save_model_dir, staged_directory)
from fm9g.backends.export.tokenizer import write_tokenizer
from fm9g.backends.lora.merge import merge_seed_lora_file
from fm9g.backends.models.materialize import check_state_dict, materialize_model, meta_model
from fm9g.backends.models.presets import preset_config
from fm9g.backends.weights.files import load_hf_config, load_hf_state_dict, load_seed_pt, save_seed_pt
from fm9g.backends.weights.names import hf_name_to_seed, hf_to_seed, seed_to_hf
from fm9g.core.errors import Fm9gError


def convert_pt_to_hf(
    input_pt: str | os.PathLike,
    output: str | os.PathLike,
    *,
    preset: str | None = None,
    config_dir: str | os.PathLike | None = None,
    lora_ckpt: str | os.PathLike | None = None,
    lora_config: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: str = "keep",
    trust_remote_code: bool = False,
):
    """A seed ``.pt`` (optionally with a seed LoRA folded in) -> an HF directory.

    The architecture comes from ``preset`` or from ``config_dir``'s config.json; ``config_dir`` is
    also the reference for tokenizer files and generation_config.json (never for weights or shard
    indexes)."""
    if (preset is None) == (config_dir is None):
        raise Fm9gError("give exactly one of --preset and --config", where="fm9g convert pt2hf",
                        fix="e.g. --preset fm9g-7b, or --config DIR holding the model's config.json")
    if (lora_ckpt is None) != (lora_config is None):
        raise Fm9gError("--lora-ckpt and --lora-config go together", where="fm9g convert pt2hf",
                        fix="pass the LoRA checkpoint and the train config it was trained with")
    input_pt, output = Path(input_pt), Path(output)
    reference = Path(config_dir) if config_dir is not None else None
    refuse_nested(output, [p for p in (input_pt, reference, lora_ckpt and Path(lora_ckpt)) if p is not None])
    check_output_free(output, force)
    config = preset_config(preset) if preset else load_hf_config(reference, trust_remote_code=trust_remote_code)
    architecture = f"preset {preset}" if preset else f"{reference}/config.json"
    seed_state = load_seed_pt(input_pt)
    notes = []
    if lora_ckpt is not None:
        seed_state = merge_seed_lora_file(seed_state, lora_ckpt, lora_config, naming="seed")
        notes.append(f"merged LoRA {lora_ckpt} (r/alpha from {lora_config})")
    state = cast_state(seed_to_hf(seed_state), dtype)
    model = materialize_model(config, state, where=str(input_pt), display=hf_name_to_seed, architecture=architecture,
                              trust_remote_code=trust_remote_code)
    with staged_directory(output, force=force) as stage:
        note, special_ids = write_tokenizer(tokenizer, stage, fallback_dir=reference)
        save_model_dir(model, stage, max_shard_size=max_shard_size, special_ids=special_ids, reference_dir=reference)
        copy_remote_code(config, reference, stage)
    return ExportReport(output=output, kind="HF model", notes=[note, *notes])


def convert_hf_to_pt(
    input_dir: str | os.PathLike,
    output_pt: str | os.PathLike,
    *,
    force: bool = False,
    dtype: str = "keep",
    trust_remote_code: bool = False,
):
    """An HF directory -> a seed ``.pt`` (``{seed name: tensor}``), checked against its config.json first."""
    input_dir, output_pt = Path(input_dir), Path(output_pt)
    refuse_nested(output_pt, [input_dir])
    if output_pt.is_dir():
        raise Fm9gError("output is a directory", where=str(output_pt), fix="give a file name such as 7b.pt")
    check_output_free(output_pt, force)
    config = load_hf_config(input_dir, trust_remote_code=trust_remote_code)
    state = load_hf_state_dict(input_dir)
    check_state_dict(state, meta_model(config, trust_remote_code=trust_remote_code), where=str(input_dir),
                     architecture=f"{input_dir}/config.json")
    save_seed_pt(hf_to_seed(cast_state(state, dtype)), output_pt)
    return ExportReport(output=output_pt, kind="seed .pt", notes=[f"{len(state)} tensors"])


def convert_merge_lora(
    base: str | os.PathLike,
    lora_ckpt: str | os.PathLike,
    lora_config: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    trust_remote_code: bool = False,
):
    """A seed LoRA folded into a seed ``.pt`` (-> ``.pt``) or an HF directory (-> HF directory)."""
    base, output = Path(base), Path(output)
    refuse_nested(output, [base, Path(lora_ckpt), Path(lora_config)])
    check_output_free(output, force)
    if not base.is_dir():
        if output.is_dir():
            raise Fm9gError("the base is a seed .pt, so the output is a .pt file, not a directory",
                            where=str(output), fix="give a file name such as 7b-merged.pt")
        save_seed_pt(merge_seed_lora_file(load_seed_pt(base), lora_ckpt, lora_config, naming="seed"), output)
        return ExportReport(output=output, kind="seed .pt with LoRA merged")
    config = load_hf_config(base, trust_remote_code=trust_remote_code)
    merged = merge_seed_lora_file(load_hf_state_dict(base), lora_ckpt, lora_config, naming="hf")
    model = materialize_model(config, merged, where=str(base), architecture=f"{base}/config.json",
                              trust_remote_code=trust_remote_code)
    with staged_directory(output, force=force) as stage:
        note, special_ids = write_tokenizer(None, stage, fallback_dir=base)
        save_model_dir(model, stage, max_shard_size=max_shard_size, special_ids=special_ids, reference_dir=base)
        copy_remote_code(config, base, stage)
    return ExportReport(output=output, kind="HF model with LoRA merged", notes=[note])
