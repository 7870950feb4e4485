"""Runs whose result is not what the user asked for stop with a clear error instead of finishing quietly."""

from __future__ import annotations

import json
import math

import pytest

from backend_helpers import list_stream_factory
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.checkpoints import latest_checkpoint
from fm9g.backends.training.config import load_train_config
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.run import RunContext
from fm9g.core.errors import Fm9gError, ValidationFailed

BASE = ["data.manifest=unused.json", "model.preset=tiny-llama", "train_iters=6", "save_iters=1", "batch_size=2",
        "max_length=64", "clip_grad=0"]


def _finite(record) -> bool:
    return math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])


def _train(save, *extra, batches=40):
    config = load_train_config(None, [*BASE, f"save={save}", *extra])
    return TorchBackend().train(config, RunContext(stream_factory=list_stream_factory(batches), show_progress=False))


def test_a_non_finite_loss_stops_training_and_is_never_checkpointed(tmp_path):
    # lr 1e30: the first update makes the weights overflow, so the second step's gradients are not finite.
    with pytest.raises(Fm9gError, match="step 2: the loss .* is not finite"):
        _train(tmp_path / "run", "lr=1e30")
    log = read_log(tmp_path / "run" / "train_log.jsonl")
    assert [_finite(record) for record in log] == [True, False]
    assert latest_checkpoint(tmp_path / "run").name == "step-00000001"


def test_max_nonfinite_steps_skips_that_many_updates_then_stops(tmp_path):
    with pytest.raises(Fm9gError, match="step 4: the loss"):
        _train(tmp_path / "run", "lr=1e30", "max_nonfinite_steps=2")
    log = read_log(tmp_path / "run" / "train_log.jsonl")
    assert [_finite(record) for record in log] == [True, False, False, False]
    assert latest_checkpoint(tmp_path / "run").name == "step-00000003"  # skipped steps save no NaN weights


def test_no_batch_at_all_is_an_error_not_done_at_step_0(tmp_path):
    with pytest.raises(Fm9gError, match="the data gave no batch for step 1"):
        _train(tmp_path / "run", batches=0)
    assert latest_checkpoint(tmp_path / "run") is None


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_numbers_are_refused_in_files_and_overrides(tmp_path, text):
    path = tmp_path / "train.json"
    path.write_text('{"data": {"manifest": "m.json"}, "model": {"preset": "tiny-llama"}, "save": "r", '
                    f'"train_iters": 1, "lr": {text}}}')
    with pytest.raises(Fm9gError, match="invalid JSON: .*(not a number JSON allows|too large)"):
        load_train_config(path)
    path.write_text(json.dumps({"data": {"manifest": "m.json"}, "model": {"preset": "tiny-llama"}, "save": "r",
                                "train_iters": 1}))
    with pytest.raises(Fm9gError, match="override value"):
        load_train_config(path, [f"lr={text}"])


def test_max_length_is_bounded_and_checked_against_the_model(tmp_path):
    with pytest.raises(ValidationFailed, match="max_length: 100000000000 is greater than the maximum"):
        load_train_config(None, [*BASE, f"save={tmp_path}", "max_length=100000000000"])
    with pytest.raises(Fm9gError, match="max_length 8192 is longer than the model's 4096 positions"):
        _train(tmp_path / "run", "max_length=8192")
