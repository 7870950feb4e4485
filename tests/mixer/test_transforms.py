"""Transform plugins (identity, chatml, fm9g) and seed transform scripts behind --trust-scripts."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixer_helpers import numbered_records, write_manifest, write_seed_dataset
from fm9g.core.errors import Fm9gError
from fm9g.mixer.stream import MixtureStream
from fm9g.mixer.transforms import TransformRef, bind_transform

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RNG = random.Random(0)


def apply(name: str, record: dict, **options) -> dict:
    return bind_transform(TransformRef(name=name, options=options), trust_scripts=False)(record, 0, RNG)


def test_chatml_matches_the_seed_template_exactly():
    assert apply("chatml", {"input": "你好", "output": "hi"}) == {
        "input": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>User\n你好<|im_end|>\n"
                 "<|im_start|>assistant\n",
        "output": "hi<|im_end|>",
    }
    assert apply("chatml", {"input": "q", "output": "a"}, system="Be brief.")["input"].startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n")
    assert apply("chatml", {"output": "plain text"}) == {"input": "", "output": "plain text"}


def test_fm9g_and_identity():
    assert apply("fm9g", {"input": "保持健康的三个提示。", "output": "以下是"}) == {
        "input": "<用户>保持健康的三个提示。<AI>", "output": "以下是"}
    assert apply("identity", {"input": "a", "output": "b", "extra": 1}) == {"input": "a", "output": "b"}
    assert apply("identity", {"output": "b"}) == {"input": "", "output": "b"}


def test_seed_script_needs_trust_and_says_how_to_migrate():
    script = EXAMPLES / "seed_scripts" / "add_template.py"
    with pytest.raises(Fm9gError) as caught:
        bind_transform(TransformRef(script=script), trust_scripts=False, where="mix.json: $[0]")
    message = str(caught.value)
    assert "arbitrary Python code" in message and "--trust-scripts" in message and "docs/plugins.md" in message
    seed = bind_transform(TransformRef(script=script), trust_scripts=True)
    plugin = bind_transform(TransformRef(name="chatml"), trust_scripts=False)
    for record in ({"input": "q", "output": "a"}, {"output": "only"}):
        assert seed(record, 3, RNG) == plugin(record, 3, RNG)


def test_broken_scripts_give_clear_errors(tmp_path):
    (tmp_path / "nofunc.py").write_text("x = 1\n")
    (tmp_path / "crash.py").write_text("raise RuntimeError('nope')\n")
    (tmp_path / "args.py").write_text("def transform(data):\n    return data\n")
    for name, expected in (("nofunc.py", "defines no function 'transform'"), ("crash.py", "failed to import"),
                           ("args.py", "must accept (data, num_sample, r)"), ("absent.py", "not found")):
        with pytest.raises(Fm9gError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            bind_transform(TransformRef(script=tmp_path / name), trust_scripts=True)


def test_seed_manifest_with_scripts_streams_like_the_plugin_manifest(tmp_path):
    write_seed_dataset(tmp_path / "idx" / "med", numbered_records("med", 25))
    shutil.copytree(EXAMPLES / "seed_scripts", tmp_path / "seed_scripts")
    seed_form = tmp_path / "seed.json"
    seed_form.write_text(json.dumps([{"dataset_name": "med", "task_name": "med", "abs_weight": 1.0, "path": "idx/med",
                                      "transforms": "./seed_scripts/add_template.py", "allow_repeat": False}]))
    plugin_form = write_manifest(tmp_path / "fm9g.json", [{"task_name": "med", "path": "idx/med", "abs_weight": 1.0,
                                                           "transform": "chatml", "allow_repeat": False}], max_length=512)
    with pytest.raises(Fm9gError, match="--trust-scripts"):
        MixtureStream.from_manifest(seed_form, max_length=512)
    from_script = list(MixtureStream.from_manifest(seed_form, max_length=512, trust_scripts=True))
    from_plugin = list(MixtureStream.from_manifest(plugin_form))
    assert len(from_script) == len(from_plugin) > 0
    for left, right in zip(from_script, from_plugin):
        np.testing.assert_array_equal(left.input_ids, right.input_ids)
        np.testing.assert_array_equal(left.targets, right.targets)
