"""Checkpoint atomicity: temp dir + rename, checkpoint.json last, ``--resume auto`` picks the latest complete one."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from fm9g.backends.training import checkpoints as ckpt
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.weights.files import load_weights_only
from fm9g.core.errors import Fm9gError


def _save(save_dir, step, *, fail=False):
    def write_files(directory):
        files = ckpt.save_full_weights({"w": torch.full((3,), float(step))}, directory)
        if fail:
            raise RuntimeError("disk full")
        return files | ckpt.write_training_state(
            directory, optimizer={"state": {}, "param_groups": []}, rng=ckpt.capture_rng_state(), scheduler={},
            stream={"batch": step}, hf_config=LlamaConfig(), base_weights=None)

    return ckpt.write_checkpoint(save_dir, step=step, tokens_seen=10 * step, config={"lr": 1.0}, backend="torch",
                                 weights="full", write_files=write_files)


def test_a_failed_save_leaves_no_checkpoint_and_latest_skips_incomplete(tmp_path):
    _save(tmp_path, 4)
    with pytest.raises(RuntimeError):
        _save(tmp_path, 8, fail=True)
    assert not (tmp_path / "step-00000008").exists() and not list(tmp_path.glob(".step-00000008*"))
    fake = tmp_path / "step-00000012"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"partial")  # renamed without a manifest: never valid
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000004"
    with pytest.raises(Fm9gError, match="no checkpoint.json"):
        ckpt.read_manifest(fake)


def test_temporaries_of_killed_runs_are_removed_at_the_next_start(tmp_path):
    _save(tmp_path, 4)
    killed = [tmp_path / f".step-00000008.fm9g-tmp-{2**22 + 7}", ckpt.rank_staging(tmp_path, 8)]
    for directory in killed:
        directory.mkdir()
        (directory / "optimizer.rank-0.pt").write_bytes(b"half")
    (tmp_path / f".base_model.safetensors.fm9g-tmp-{os.getpid()}").write_bytes(b"half")
    ckpt.check_save_dir(tmp_path, resuming=True, is_main=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004"]
    with pytest.raises(Fm9gError, match="already holds checkpoints"):
        ckpt.check_save_dir(tmp_path, resuming=False, is_main=True)


def test_manifest_is_written_last_and_validated(tmp_path):
    directory = _save(tmp_path, 3)
    manifest = ckpt.read_manifest(directory)
    assert manifest["files"]["weights"] == "model.safetensors" and manifest["tokens_seen"] == 30
    assert set(manifest["files"]) == {"weights", "optimizer", "rng", "scheduler", "stream_state", "hf_config"}
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


def test_resume_point_reads_the_checkpoint_once_and_hands_out_its_parts(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 5)
    point = ResumePoint.find("auto", tmp_path)
    assert point.directory == tmp_path / "step-00000005" and (point.step, point.tokens_seen) == (5, 50)
    assert point.stream_state() == {"batch": 5} and point.base_weights() is None
    assert point.changed_keys({"lr": 1.0}) == [] and point.changed_keys({"lr": 2.0, "seed": 1}) == ["lr", "seed"]
    assert ResumePoint.find(None, tmp_path) is None and ResumePoint.find("auto", tmp_path / "empty") is None
    with pytest.raises(Fm9gError, match="no checkpoint.json"):
        ResumePoint.find(tmp_path / "step-00000003", tmp_path)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(load_weights_only(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-rng", "edit-stream-state"])
def test_resume_auto_skips_a_corrupt_latest_checkpoint_and_names_the_file(tmp_path, damage):
    _save(tmp_path, 2)
    latest = _save(tmp_path, 4)
    if damage == "truncate-weights":
        target = latest / "model.safetensors"
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "garbage-rng":
        target = latest / "rng.pt"
        target.write_bytes(os.urandom(target.stat().st_size))  # same size: only the checksum can tell
    else:
        target = latest / "stream_state.json"
        target.write_text(target.read_text().replace("4", "5"))
    warnings: list[str] = []
    point = ResumePoint.find("auto", tmp_path, warn=warnings.append)
    assert point.step == 2
    assert len(warnings) == 1 and target.name in warnings[0] and "corrupt" in warnings[0]
    with pytest.raises(Fm9gError, match=f"{target.name} is corrupt"):
        ResumePoint.find(latest, tmp_path)  # named explicitly: no silent fallback


def test_a_second_run_into_the_same_save_dir_is_refused(tmp_path):
    first = ckpt.SaveDirLock(tmp_path)
    with pytest.raises(Fm9gError, match=f"another fm9g train \\(pid {os.getpid()}\\)"):
        ckpt.SaveDirLock(tmp_path)
    first.release()
    ckpt.SaveDirLock(tmp_path).release()  # free again once the first run ended


def test_retention_keeps_the_newest_and_never_the_one_resume_needs(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step)
    (tmp_path / "step-00000008" / "checkpoint.json").unlink()  # the newest is incomplete
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == ["step-00000006",
                                                                                          "step-00000008"]
    assert [p.name for p in deleted] == ["step-00000002", "step-00000004"]
    assert ResumePoint.find("auto", tmp_path).step == 6  # still there: the one --resume auto takes
    assert ckpt.prune_checkpoints(tmp_path, keep=1) == []  # 8 is newest, but 6 is what resume needs
    (tmp_path / ".deleting-step-00000004").mkdir()  # a deletion a crash interrupted
    ckpt.check_save_dir(tmp_path, resuming=True, is_main=True)
    assert not (tmp_path / ".deleting-step-00000004").exists()
