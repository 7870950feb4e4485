"""Checkpoint atomicity: temp dir + rename, checkpoint.json last, ``--resume auto`` picks the latest complete one."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fm9g.backends import checkpoints as ckpt
from fm9g.core.errors import Fm9gError


def _save(save_dir, step, *, fail=False):
    def write_weights(directory):
        ckpt.save_full_weights({"w": torch.full((3,), float(step))}, directory)
        if fail:
            raise RuntimeError("disk full")
        return {"weights": "model.safetensors"}

    return ckpt.save_checkpoint(save_dir, step=step, tokens_seen=10 * step, config={"lr": 1.0}, weights="full",
                                write_weights=write_weights, optimizer_state={"state": {}}, scheduler_state={},
                                rng_state=ckpt.capture_rng_state(), stream_state={"batch": step})


def test_a_failed_save_leaves_no_checkpoint_and_latest_skips_incomplete(tmp_path):
    _save(tmp_path, 4)
    with pytest.raises(RuntimeError):
        _save(tmp_path, 8, fail=True)
    assert not (tmp_path / "step-00000008").exists()
    assert list(tmp_path.glob(".tmp-step-00000008-*"))  # the half-written temp dir is not a checkpoint
    fake = tmp_path / "step-00000012"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"partial")  # renamed without a manifest: never valid
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000004"
    with pytest.raises(Fm9gError, match="no checkpoint.json"):
        ckpt.read_manifest(fake)
    ckpt.remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))


def test_manifest_is_written_last_and_validated(tmp_path):
    directory = _save(tmp_path, 3)
    manifest = ckpt.read_manifest(directory)
    assert manifest["files"]["weights"] == "model.safetensors" and manifest["tokens_seen"] == 30
    newest = max(directory.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "checkpoint.json"
    (directory / "optimizer.pt").unlink()
    with pytest.raises(Fm9gError, match="missing optimizer.pt"):
        ckpt.read_manifest(directory)
    _save(tmp_path, 3)  # re-saving a step replaces it whole
    assert ckpt.read_manifest(directory)["step"] == 3
    document = json.loads((directory / "checkpoint.json").read_text())
    document["weights"] = "half"
    (directory / "checkpoint.json").write_text(json.dumps(document))
    with pytest.raises(Fm9gError, match="invalid checkpoint manifest"):
        ckpt.read_manifest(directory)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(ckpt.load_tensors(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
