"""Online reweighting: bounded shares, the stream's weight changes (no row twice in an epoch, exact
resume), and training runs whose weight curves survive kill -9 + resume and match on 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from backend_helpers import fm9g_command, run_fm9g, write_train_config
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.online_mixing import OnlineMixing, bounded_shares
from fm9g.core.errors import Fm9gError
from fm9g.mixer.stream import MixtureStream
from fm9g.tokenizers import load_tokenizer


def test_bounded_shares_sum_to_one_within_bounds_and_refuse_impossible_bounds():
    assert bounded_shares([0.9, 0.05, 0.05], 0.1, 0.6) == pytest.approx([0.6, 0.2, 0.2])
    assert bounded_shares([1.0, 1.0, 2.0], 0.0, 1.0) == pytest.approx([0.25, 0.25, 0.5])
    shares = bounded_shares([1e-9, 5.0, 3.0, 2.0], 0.15, 0.4)
    assert sum(shares) == pytest.approx(1) and all(0.15 - 1e-12 <= s <= 0.4 + 1e-12 for s in shares)
    with pytest.raises(Fm9gError, match="cannot sum to 1"):
        bounded_shares([1, 1, 1], 0.4, 1.0)
    with pytest.raises(Fm9gError, match="cannot sum to 1"):
        bounded_shares([1, 1, 1], 0.0, 0.3)


def test_doremi_moves_weight_to_the_task_furthest_behind_its_reference():
    options = {"method": "doremi", "every": 2, "step_size": 1.0, "smoothing": 0.0, "min_share": 0.0,
               "max_share": 1.0, "reference": {"chat": 2.0, "book": 2.0}}
    mixing = OnlineMixing(options, ["chat", "book"], {"chat": 0.5, "book": 0.5})
    evaluation = {"step": 2, "tasks": {"chat": {"loss": 3.0}, "book": {"loss": 2.0}}}
    assert mixing.update(1, evaluation) is None  # not an update step
    weights = mixing.update(2, evaluation)
    assert weights["chat"] == pytest.approx(1 / (1 + pow(2.718281828459045, -1.0)))  # e^1 : e^0
    with pytest.raises(Fm9gError, match="needs this step's held-out evaluation"):
        mixing.update(4, evaluation)


def _book_outputs(mixture) -> list[str]:
    from fm9g.mixer.sources import open_dataset

    dataset = open_dataset(mixture / "idx" / "book")
    return [dataset[i]["output"] for i in range(len(dataset))]


def _stream(mixture, state=None):
    return MixtureStream.from_manifest(mixture / "mix.json", state=state, prefetch=False)


def _book_samples(batch, tokenizer, book_task: int) -> list[str]:
    starts = [i for i in range(batch.num_tokens) if batch.position_ids[i] == 0] + [batch.num_tokens]
    return [tokenizer.decode([int(t) for t in batch.input_ids[b + 1:e]]) for b, e in zip(starts, starts[1:])
            if batch.task_ids[b] == book_task]


def test_weight_changes_keep_each_epoch_a_permutation_follow_the_new_shares_and_resume_exactly(mixture):
    tokenizer = load_tokenizer("byte")
    rows = _book_outputs(mixture)
    stream = _stream(mixture)
    book = stream.task_names.index("book")
    drawn: list[str] = []
    changes = [{"chat": 0.9, "book": 0.1}, {"chat": 0.2, "book": 0.8}, {"chat": 0.5, "book": 0.5}]
    saved_state, after_state = None, []
    for index, batch in enumerate(stream):
        drawn.extend(_book_samples(batch, tokenizer, book))
        if index % 7 == 6:
            stream.set_weights(changes[(index // 7) % len(changes)])
        if index == 20:
            saved_state = json.loads(json.dumps(stream.state_dict()))
        elif 20 < index <= 27:  # drawn with the weights of the change at 20, until the next one at 27
            after_state.append(batch.input_ids.tobytes())
        if len(drawn) >= len(rows) + 20 or index > 2000:
            break
    assert saved_state["weights"] != saved_state["mix"]
    assert Counter(drawn[:len(rows)]) == Counter(rows)  # epoch 0 of book: every row exactly once
    resumed = _stream(mixture, state=saved_state)
    assert resumed.weights == {name: weight for name, weight in saved_state["weights"]}
    assert [b.input_ids.tobytes() for _, b in zip(range(len(after_state)), resumed)] == after_state

    shares = _stream(mixture)
    shares.set_weights({"chat": 0.2, "book": 0.8})
    tokens = Counter()
    for _, batch in zip(range(60), shares):
        for task in (0, 1):
            tokens[task] += int((batch.task_ids == task).sum())
    # within a sample or two of 0.8 (a sample is ~1 % of these tokens); the manifest's 0.4 would be far off
    assert tokens[book] / (tokens[0] + tokens[1]) == pytest.approx(0.8, abs=0.03)


ONLINE = 'mixing={"online": {"method": "doremi", "every": 2, "step_size": 2.0, "smoothing": 0.05, ' \
         '"min_share": 0.1, "max_share": 0.9, "reference": {"chat": 3.0, "book": 3.0}}}'


def _weights(run):
    return [r["mixture_weights"] for r in read_log(run / "train_log.jsonl")]


@pytest.mark.slow
def test_kill_9_and_resume_auto_reproduce_the_weight_and_loss_curves(mixture, tmp_path):
    overrides = ["train_iters=12", "save_iters=3", "eval_iters=2", ONLINE]
    whole = run_fm9g("train", "--config", str(write_train_config(tmp_path, mixture / "mix.json")), *overrides,
                     "save=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert "mixing: online (doremi) every 2 steps" in whole.stderr
    curve = _weights(tmp_path / "whole")
    assert len({json.dumps(w) for w in curve}) >= 3  # the weights did change, several times
    config = write_train_config(tmp_path, mixture / "mix.json", name="killed.json", save="killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fm9g_command("train", "--config", str(config), *overrides), env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed" / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and (
            not log.exists() or log.read_text().count("\n") < 5):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    resumed = run_fm9g("train", "--config", str(config), *overrides, "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _weights(tmp_path / "killed") == curve
    assert [r["loss"] for r in read_log(log)] == [r["loss"] for r in read_log(tmp_path / "whole" / "train_log.jsonl")]


@pytest.mark.slow
def test_two_processes_change_the_weights_as_one(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", model={"preset": "tiny-qwen2"})
    common = ["train_iters=4", "save_iters=4", "eval_iters=2", ONLINE]
    two = run_fm9g("train", "--config", str(config), "--nproc-per-node", "2", *common, "save=two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    one = run_fm9g("train", "--config", str(config), *common, "grad_accum=2", "save=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two_curve, one_curve = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert two_curve[-1] != two_curve[0]
    # the weights come from all-reduced held-out losses that agree to ~1e-6 (FSDP vs accumulation)
    for a, b in zip(two_curve, one_curve):
        assert a == pytest.approx(b, rel=1e-4)


def test_bad_online_mixing_settings_are_clear_errors(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", train_iters=2)
    result = run_fm9g("train", "--config", str(config), "eval_iters=3", ONLINE, cwd=tmp_path)
    assert result.returncode != 0 and "multiple of eval_iters" in result.stderr
    no_reference = ONLINE.replace(', "reference": {"chat": 3.0, "book": 3.0}', "")
    result = run_fm9g("train", "--config", str(config), "eval_iters=2", no_reference, cwd=tmp_path)
    assert result.returncode != 0 and "reference run" in result.stderr
    impossible = ONLINE.replace('"min_share": 0.1', '"min_share": 0.6')
    result = run_fm9g("train", "--config", str(config), "eval_iters=2", impossible, cwd=tmp_path)
    assert result.returncode != 0 and "cannot sum to 1" in result.stderr
    assert all("Traceback" not in text for text in (result.stderr,))
