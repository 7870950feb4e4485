"""FSDP2 on CPU: 2 gloo processes under torchrun (started by ``fm9g train --nproc-per-node 2``).

Both ranks train on disjoint global batches (rank r gets b ≡ r mod 2) and the final weights match a
single process that accumulates gradients over the same global batches (``grad_accum=2``).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from backend_helpers import run_fm9g, write_train_config
from fm9g.backends.training.metrics import read_log


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process_accumulation(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", model={"preset": "tiny-qwen2"})
    common = ["train_iters=4", "save_iters=2"]
    sharded = run_fm9g("train", "--config", str(config), "--nproc-per-node", "2", *common, "save=fsdp", cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr
    assert "× 2 process(es)" in sharded.stderr
    single = run_fm9g("train", "--config", str(config), *common, "grad_accum=2", "save=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr

    fsdp_log, single_log = read_log(tmp_path / "fsdp" / "train_log.jsonl"), read_log(tmp_path / "single" / "train_log.jsonl")
    assert [r["batches"] for r in fsdp_log] == [[[0], [1]], [[2], [3]], [[4], [5]], [[6], [7]]]
    assert [r["batches"] for r in single_log] == [[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]
    assert [r["tokens"] for r in fsdp_log] == [r["tokens"] for r in single_log]
    assert [r["loss"] for r in fsdp_log] == pytest.approx([r["loss"] for r in single_log], rel=1e-5)
    # A norm over one rank's shard only would be off by about sqrt(2) (rel 0.3), far beyond rel 1e-5.
    assert [r["grad_norm"] for r in fsdp_log] == pytest.approx([r["grad_norm"] for r in single_log], rel=1e-5)

    a = load_file(tmp_path / "fsdp" / "step-00000004" / "model.safetensors")
    b = load_file(tmp_path / "single" / "step-00000004" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)

    # The sharded run's checkpoint holds full tensors: one process resumes it and lands on the same weights.
    (tmp_path / "from_fsdp").mkdir()
    shutil.copytree(tmp_path / "fsdp" / "step-00000002", tmp_path / "from_fsdp" / "step-00000002")
    resumed = run_fm9g("train", "--config", str(config), *common, "grad_accum=2", "save=from_fsdp",
                       "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    c = load_file(tmp_path / "from_fsdp" / "step-00000004" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(c[name], b[name], rtol=1e-4, atol=1e-5)
