"""Reading a training checkpoint for ``fm9g export``: its manifest, model config,
weights, LoRA adapter and base weights, and the files its train config names.

Train configs record absolute paths (resolved against the config file when it was read), so the
paths are used as they are; a relative path (older or hand-written checkpoints) is looked up beside
the checkpoint, in the run directory above it and in the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fm9g.backends.lora.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from fm9g.backends.lora.merge import merge_lora_pairs, peft_scale
from fm9g.backends.models.presets import preset_config
from fm9g.backends.training.checkpoints import BASE_WEIGHTS, FULL_WEIGHTS, HF_CONFIG, MANIFEST, read_manifest
from fm9g.backends.weights.files import (SAFETENSORS_INDEX, load_hf_config, load_hf_state_dict, load_seed_pt,
                                         read_safetensors)
from fm9g.backends.weights.names import PEFT_KEYS, lora_pairs, seed_to_hf
from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import read_json
from fm9g.mixer.manifest import load_manifest


class CheckpointSource:
    """One training checkpoint directory and everything it points at.

    For a LoRA checkpoint the base weights come, first found: from ``--base`` (an HF directory, a
    seed ``.pt`` or a ``.safetensors`` file); from ``base_model.safetensors`` in the checkpoint; from
    the train config's ``model.hf_path``; from ``model.seed_pt`` (seed names). fm9g train stores the
    random base of a LoRA run on a bare preset as ``base_model.safetensors``; a checkpoint written
    before it did needs ``--base``."""

    def __init__(self, directory: Path, manifest: dict[str, Any], base: Path | None, *,
                 trust_remote_code: bool = False):
        self.directory = directory
        self.manifest = manifest
        self.config: dict[str, Any] = manifest.get("config") or {}
        self.model_block: dict[str, Any] = self.config.get("model") or {}
        self.weights: str = manifest["weights"]
        self.files: dict[str, str] = manifest.get("files") or {}
        self.notes: list[str] = []
        self.explicit_base = base
        self.trust_remote_code = trust_remote_code
        """Only from the user's command line: never from the checkpoint's stored config, which a
        crafted checkpoint could set to make its ``auto_map`` code run on export."""

    @classmethod
    def open(cls, directory: Path, *, base: Path | None = None, trust_remote_code: bool = False) -> CheckpointSource:
        if not directory.is_dir():
            raise Fm9gError("checkpoint directory not found", where=str(directory), fix="check --checkpoint")
        manifest = read_manifest(directory)
        if base is not None and not base.exists():
            raise Fm9gError("base weights not found", where=f"--base {base}", fix="check the path")
        return cls(directory, manifest, base, trust_remote_code=trust_remote_code)

    def file(self, role: str, default: str) -> Path:
        """The checkpoint's file of ``role`` (``files`` in checkpoint.json), or ``default`` in it."""
        return self.directory / self.files.get(role, default)

    def _resolve(self, raw: str, key: str, *, required: bool = True) -> Path | None:
        """A path from the train config: absolute as recorded, or (relative) beside the checkpoint, in the
        run directories above it, or in the current directory."""
        path = Path(raw)
        candidates = [path] if path.is_absolute() else [
            self.directory / path, self.directory.parent / path, self.directory.parent.parent / path, Path.cwd() / path]
        found = next((candidate for candidate in candidates if candidate.exists()), None)
        if found is None and required:
            raise Fm9gError(f"'{raw}' not found", where=f"{self.directory / MANIFEST}: $.config.{key}",
                            fix="pass the base weights with --base PATH")
        return found

    @property
    def tokenizer_spec(self) -> str | None:
        """The tokenizer the run trained with: the train config's, else its data's (the mix manifest's
        or the materialized mixture's), else ``None`` (the base model directory's files, if any)."""
        spec = self.config.get("tokenizer") or self._data_tokenizer_spec()
        if isinstance(spec, str) and spec.startswith(("hf:", "sp:")):
            found = self._resolve(spec[3:], "tokenizer", required=False)
            spec = f"{spec[:3]}{found}" if found is not None else spec
        return spec

    def data_manifest(self) -> Path | None:
        """The run's mix manifest (``data.manifest`` of the train config), when it names one that exists."""
        raw = (self.config.get("data") or {}).get("manifest")
        return self._resolve(raw, "data.manifest", required=False) if raw else None

    def _data_tokenizer_spec(self) -> str | None:
        data = self.config.get("data") or {}
        try:
            if data.get("manifest"):
                path = self._resolve(data["manifest"], "data.manifest", required=False)
                return load_manifest(path, check_paths=False).tokenizer if path is not None else None
            if data.get("mixture"):
                path = self._resolve(data["mixture"], "data.mixture", required=False)
                description = path / "mixture.json" if path is not None else None
                if description is not None and description.is_file():
                    return read_json(description).get("tokenizer")
        except Fm9gError as error:
            self.notes.append(f"the run's data names no readable tokenizer ({error})")
        return None

    @property
    def architecture(self) -> str:
        preset = self.model_block.get("preset")
        return f"preset {preset}" if preset and not self.model_block.get("hf_path") else "the checkpoint's config.json"

    def base_hf_dir(self) -> Path | None:
        """The base model's HF directory, when the base is one (reference for tokenizer/generation)."""
        if self.explicit_base is not None:
            return self.explicit_base if self.explicit_base.is_dir() else None
        raw = self.model_block.get("hf_path")
        return self._resolve(raw, "model.hf_path", required=False) if raw else None

    def external_inputs(self) -> list[Path]:
        inputs = [self.explicit_base] if self.explicit_base is not None else []
        for key in ("hf_path", "seed_pt"):
            raw = self.model_block.get(key)
            found = self._resolve(raw, f"model.{key}", required=False) if raw else None
            inputs += [found] if found is not None else []
        return inputs

    def model_config(self):
        if (self.directory / HF_CONFIG).is_file():
            return load_hf_config(self.directory, trust_remote_code=self.trust_remote_code)
        if self.base_hf_dir() is not None:
            return load_hf_config(self.base_hf_dir(), trust_remote_code=self.trust_remote_code)
        if self.model_block.get("preset"):
            return preset_config(self.model_block["preset"])
        raise Fm9gError("no config.json and no model preset", where=str(self.directory),
                        fix="the checkpoint is incomplete; export a checkpoint written by fm9g train")

    def full_state(self) -> dict[str, Any]:
        weights = self.file("weights", FULL_WEIGHTS)
        if weights.is_file():
            return read_safetensors(weights)
        if (self.directory / SAFETENSORS_INDEX).is_file():
            return load_hf_state_dict(self.directory)
        raise Fm9gError(f"{weights.name} is missing", where=str(self.directory),
                        fix="the checkpoint is incomplete; pick another step")

    def adapter(self) -> tuple[dict[str, Any], dict[str, Any]]:
        config_path = self.file("adapter_config", ADAPTER_CONFIG)
        if not config_path.is_file():
            raise Fm9gError(f"{config_path.name} is missing", where=str(self.directory),
                            fix="the LoRA checkpoint is incomplete; pick another step")
        return read_json(config_path), read_safetensors(self.file("adapter", ADAPTER_WEIGHTS))

    def base_state(self) -> dict[str, Any]:
        base = self.explicit_base
        stored = self.file("base_weights", BASE_WEIGHTS)
        if base is None and stored.is_file():
            base = stored
        if base is None and self.model_block.get("hf_path"):
            base = self._resolve(self.model_block["hf_path"], "model.hf_path")
        if base is None and self.model_block.get("seed_pt"):
            base = self._resolve(self.model_block["seed_pt"], "model.seed_pt")
        if base is None:
            raise Fm9gError("the LoRA run's base weights are not stored anywhere (a bare preset is randomly "
                            "initialised)", where=str(self.directory / MANIFEST),
                            fix="pass the base weights with --base HF_DIR|seed.pt|weights.safetensors")
        self.notes.append(f"base weights: {base}")
        if base.is_dir():
            return load_hf_state_dict(base)
        if base.suffix == ".safetensors":
            return read_safetensors(base)
        return seed_to_hf(load_seed_pt(base))

    def merged_state(self) -> dict[str, Any]:
        if self.weights != "lora":
            raise Fm9gError("not a LoRA checkpoint", where=str(self.directory), fix="drop --merge-lora")
        adapter_config, adapter_state = self.adapter()
        where = str(self.file("adapter", ADAPTER_WEIGHTS))
        pairs = lora_pairs(adapter_state, PEFT_KEYS, where=where)
        return merge_lora_pairs(self.base_state(), pairs, peft_scale(adapter_config, where=where), where=where)
