"""Checkpoint retention: the newest N, the best K by held-out loss, optimizer state only where resume needs it."""

from __future__ import annotations

import json

import pytest

from backend_helpers import run_fm9g, write_train_config
from fm9g.backends.training import checkpoints
from fm9g.backends.training.resume import ResumePoint
from fm9g.core.errors import Fm9gError

LOSSES = {2: 3.0, 4: 1.0, 6: 2.5, 8: 1.5, 10: 2.0, 12: 2.2}
"""Held-out losses per step: the best (4, then 8) are not the newest."""


def _checkpoint(save, step, loss):
    def files(directory):
        (directory / "model.safetensors").write_bytes(b"weights")
        (directory / checkpoints.OPTIMIZER).write_bytes(b"moments" * 100)
        (directory / "optimizer.rank-1.pt").write_bytes(b"slices")
        return {"weights": "model.safetensors", "optimizer": checkpoints.OPTIMIZER,
                "optimizer_rank_1": "optimizer.rank-1.pt"}

    evaluation = {"step": step, "loss": loss, "weighted_loss": -loss, "tasks": {"chat": {"loss": 10 - loss}}}
    return checkpoints.write_checkpoint(save, step=step, tokens_seen=step, config={}, backend="torch",
                                        weights="full", write_files=files, evaluation=evaluation)


def _names(save):
    return sorted(int(p.name[5:]) for p in save.iterdir() if p.name.startswith("step-"))


@pytest.mark.parametrize("metric, best", [("loss", [4, 8]), ("weighted_loss", [2, 6]), ("chat", [2, 6])])
def test_keep_best_keeps_the_lowest_metric_beside_the_newest(tmp_path, metric, best):
    for step, loss in LOSSES.items():
        _checkpoint(tmp_path, step, loss)
    checkpoints.prune_checkpoints(tmp_path, 2, keep_best=2, best_metric=metric)
    assert _names(tmp_path) == sorted({10, 12, *best})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-deleted left


def test_the_checkpoint_resume_auto_takes_is_never_pruned(tmp_path):
    for step, loss in LOSSES.items():
        _checkpoint(tmp_path, step, loss)
    (tmp_path / "step-00000012" / "model.safetensors").write_bytes(b"corrupt")  # newest: corrupt
    checkpoints.prune_checkpoints(tmp_path, 1, keep_best=1)
    assert _names(tmp_path) == [4, 10, 12]  # 12 newest, 4 best, 10 what --resume auto takes


def test_dropping_optimizer_state_keeps_older_checkpoints_complete_but_not_resumable(tmp_path):
    for step, loss in LOSSES.items():
        _checkpoint(tmp_path, step, loss)
    newest = tmp_path / "step-00000012"
    changed = checkpoints.drop_optimizer_state(tmp_path, keep=newest)
    assert len(changed) == 5 and newest not in changed
    older = tmp_path / "step-00000004"
    manifest = checkpoints.read_manifest(older)  # still complete: every listed file present, checksums match
    assert manifest["optimizer"] == "dropped" and set(manifest["files"]) == {"weights"}
    assert sorted(p.name for p in older.iterdir()) == [".fm9g-output", "checkpoint.json", "model.safetensors"]
    assert (newest / checkpoints.OPTIMIZER).is_file() and "optimizer" not in checkpoints.read_manifest(newest)
    with pytest.raises(Fm9gError, match="optimizer state was dropped"):
        ResumePoint.open(older)
    (newest / "model.safetensors").write_bytes(b"corrupt")
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "step-00000010"  # complete, for eval/export
    skipped: list[str] = []
    assert checkpoints.latest_checkpoint(tmp_path, skipped, resumable=True) is None  # none can resume exactly
    assert len(skipped) == 6
    assert checkpoints.drop_optimizer_state(tmp_path, keep=newest) == []  # idempotent


def test_a_run_keeps_what_it_was_told_and_resumes_from_its_newest_checkpoint(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", train_iters=8, save_iters=2, eval_iters=2,
                                save_total_limit=2, keep_best=1, save_optimizer="latest")
    first = run_fm9g("train", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    kept = _names(run)
    losses = {step: checkpoints.read_manifest(run / checkpoints.step_dir_name(step))["evaluation"]["loss"]
              for step in kept}
    assert kept[-2:] == [6, 8] and len(kept) in (2, 3)
    assert min(losses, key=losses.get) in kept
    assert [checkpoints.read_manifest(run / checkpoints.step_dir_name(s)).get("optimizer") for s in kept] == \
        ["dropped"] * (len(kept) - 1) + [None]
    resumed = run_fm9g("train", "--config", str(config), "train_iters=10", "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "(step 8)" in resumed.stderr
    refused = run_fm9g("train", "--config", str(config), "train_iters=12", "--resume",
                       str(run / checkpoints.step_dir_name(8)), cwd=tmp_path)
    assert refused.returncode != 0 and "optimizer state was dropped" in refused.stderr

    bad = write_train_config(tmp_path, mixture / "mix.json", name="bad.json", save_total_limit=2, keep_best=1)
    result = run_fm9g("train", "--config", str(bad), cwd=tmp_path)
    assert result.returncode != 0 and "keep_best" in result.stderr and "eval_iters" in result.stderr
    unknown = run_fm9g("train", "--config", str(config), "save=other", "best_metric=nope", cwd=tmp_path)
    assert unknown.returncode != 0 and "best_metric 'nope'" in unknown.stderr and "chat" in unknown.stderr
    assert json.loads((run / checkpoints.step_dir_name(10) / "checkpoint.json").read_text())["step"] == 10
