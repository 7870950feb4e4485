"""The generated pydantic models in fm9g/core/models: no drift from the schemas, and they parse examples."""

from __future__ import annotations

import importlib.util
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import fm9g.core.models as models
from fm9g.core.models import checkpoint, meta, mix, train
from fm9g.core.schemas import load_schema

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "fm9g" / "core" / "models"
ROOT_MODELS = {"mix": mix.MixManifest, "meta": meta.IndexMeta, "train": train.TrainConfig,
               "checkpoint": checkpoint.CheckpointManifest}


def _generator_script():
    spec = importlib.util.spec_from_file_location("generate_models", REPO / "scripts" / "generate_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_checked_in_models_match_a_fresh_generation(tmp_path: Path) -> None:
    installed = version("datamodel-code-generator")
    if installed != models.GENERATOR_VERSION:
        pytest.skip(f"models were generated with datamodel-code-generator {models.GENERATOR_VERSION}, "
                    f"{installed} is installed (test_models_cover_every_schema_property still checks drift)")
    written = _generator_script().generate_all(tmp_path)
    assert sorted(path.name for path in written) == sorted(path.name for path in MODELS_DIR.glob("*.py"))
    stale = [path.name for path in written if path.read_text() != (MODELS_DIR / path.name).read_text()]
    assert not stale, f"{stale} differ from the schemas: run python scripts/generate_models.py"


def _fields(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def _required(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items() if field.is_required()}


SCHEMA_OBJECTS = [
    ("train", (), train.TrainConfig),
    ("train", ("properties", "delta"), train.Delta),
    ("meta", (), meta.IndexMeta),
    ("meta", ("properties", "length_distribute"), meta.LengthDistribute),
    ("checkpoint", (), checkpoint.CheckpointManifest),
    ("mix", ("$defs", "ObjectManifest"), mix.ObjectManifest),
    ("mix", ("$defs", "DatasetEntry"), mix.DatasetEntry),
    ("mix", ("$defs", "SeedEntry"), mix.SeedEntry),
]


@pytest.mark.parametrize(("schema_name", "pointer", "model"), SCHEMA_OBJECTS,
                         ids=[f"{s}:{m.__name__}" for s, _, m in SCHEMA_OBJECTS])
def test_models_cover_every_schema_property(schema_name: str, pointer: tuple[str, ...], model: type[BaseModel]) -> None:
    node: Any = load_schema(schema_name)
    for key in pointer:
        node = node[key]
    assert _fields(model) == set(node["properties"]), "run python scripts/generate_models.py"
    assert _required(model) == set(node.get("required", [])), "run python scripts/generate_models.py"
    for key, spec in node["properties"].items():
        if "default" in spec and not isinstance(spec["default"], (dict, list)):
            field = next(f for n, f in model.model_fields.items() if (f.alias or n) == key)
            assert field.default == spec["default"], f"default of {key}: run python scripts/generate_models.py"


def test_examples_parse_into_models(any_example) -> None:
    name, document = any_example
    parsed = ROOT_MODELS[name].model_validate(document)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == document


def test_typed_access_and_defaults(example) -> None:
    config = train.TrainConfig.model_validate(example("train"))
    assert config.data.manifest == "mix.json" and config.model.preset == "tiny-llama"
    assert config.delta is not None and config.delta.lora_r == 8 and config.delta.lora_dropout == 0.0
    assert config.lr_scheduler == "wsd" and config.warmup_iters == 0 and config.backend == "torch"

    seed = mix.MixManifest.model_validate(example("mix")).root
    assert isinstance(seed, mix.SeedManifest) and seed.root[1].nlines == 48818
    objects = mix.MixManifest.model_validate(example("mix", 1)).root
    assert isinstance(objects, mix.ObjectManifest)
    assert objects.datasets[0].transform.options == {"system": "You are a helpful assistant."}
    assert objects.datasets[1].oversize_rule == "segment" and objects.datasets[1].max_epochs is None

    index_meta = meta.IndexMeta.model_validate(example("meta"))
    assert index_meta.length_distribute.field_4k_8k == 0 and index_meta.tokenizer is None


def test_models_reject_what_the_schema_rejects(example) -> None:
    manifest = example("mix")
    manifest[0]["abs_weight"] = -0.5
    with pytest.raises(ValidationError):
        mix.MixManifest.model_validate(manifest)
    config = example("train")
    config["lr_scheduler"] = "exponential"
    with pytest.raises(ValidationError):
        train.TrainConfig.model_validate(config)
