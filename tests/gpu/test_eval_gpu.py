"""Held-out evaluation on a GPU, on both backends, full and LoRA: the training it must not change,
the history it logs, and ``fm9g eval`` of the checkpoint reproducing the logged figures.

bf16 autocast on both sides. The torch backend evaluates its fp32 master weights, as ``fm9g eval``
does, so they agree to kernel non-determinism (< 1e-3); bmtrain evaluates its bf16 parameters,
which are the fp32 master rounded once more than autocast rounds it (< 1e-2). A model left in
train mode, a lost task or cross-sample attention each move these losses by more than 2 %.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from backend_helpers import write_train_config
from fm9g.backends.training.metrics import read_log

pytestmark = pytest.mark.gpu

CASES = {
    "torch-full": ({"backend": "torch"}, 1e-3),
    "torch-lora": ({"backend": "torch", "lr": 2e-2,
                    "delta": {"engine": "peft", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.3}}, 1e-3),
    "bmtrain-full": ({"backend": "bmtrain"}, 1e-2),
}


def _fm9g(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    result = subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluation_follows_training_and_fm9g_eval_reproduces_it(case, gpu_mixture, tmp_path, record):
    fields, tolerance = CASES[case]
    if fields["backend"] == "bmtrain" and importlib.util.find_spec("bmtrain") is None:
        pytest.skip("bmtrain is not installed (tests/gpu/run.sh builds it)")
    config = write_train_config(tmp_path, gpu_mixture / "mix.json", model={"preset": "small-qwen2"}, batch_size=4,
                                max_length=256, train_iters=6, save_iters=6, **fields)
    _fm9g(tmp_path, "train", "--config", str(config), "save=plain")
    _fm9g(tmp_path, "train", "--config", str(config), "save=evaluated", "eval_iters=3")
    plain = [r["loss"] for r in read_log(tmp_path / "plain" / "train_log.jsonl")]
    evaluated = [r["loss"] for r in read_log(tmp_path / "evaluated" / "train_log.jsonl")]
    assert evaluated == pytest.approx(plain, rel=1e-3)  # GPU kernels are not bitwise repeatable
    history = read_log(tmp_path / "evaluated" / "eval_log.jsonl")
    assert [r["step"] for r in history] == [3, 6] and history[1]["loss"] < history[0]["loss"]

    report = tmp_path / "eval.json"
    _fm9g(tmp_path, "eval", "--checkpoint", str(tmp_path / "evaluated" / "step-00000006"), "--report", str(report))
    again = json.loads(report.read_text())["evaluation"]
    record(f"eval_{case}", {"train_losses": evaluated, "logged": {n: t["loss"] for n, t in history[1]["tasks"].items()},
                            "fm9g_eval": {n: t["loss"] for n, t in again["tasks"].items()},
                            "eval_tokens_per_s": history[1]["tokens_per_s"]})
    assert again["tasks"].keys() == history[1]["tasks"].keys() == {"chat", "book"}
    for name, task in history[1]["tasks"].items():
        assert again["tasks"][name]["target_tokens"] == task["target_tokens"]
        assert again["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=tolerance)
