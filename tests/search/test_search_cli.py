"""``fm9g mix search`` end to end with real ``fm9g train`` proxy runs on a tiny mixture.

One search runs uninterrupted (two proxies at a time); another (one at a time) is killed with SIGKILL while its second run trains and is
rerun: it trains only the unfinished runs, leaves the finished ones' records untouched, and ends
with the same runs, fit and proposal as the first (the draws follow the seed, the runs are
deterministic). Both keep every share inside the bounds given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from backend_helpers import build_mixture, fm9g_command, run_fm9g, write_train_config

RUNS = 4
SEARCH_ARGS = ("--target", "chat:0.5,book:0.5", "--runs", str(RUNS), "--seed", "3", "--min-share", "book:0.2",
               "--candidates", "2000")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    root = build_mixture(tmp_path_factory.mktemp("search"))
    write_train_config(root, root / "mix.json", name="proxy.json", train_iters=3, save_iters=3, eval_iters=3)
    return root


def search(root: Path, output: str, *extra: str) -> subprocess.CompletedProcess:
    return run_fm9g("mix", "search", "--manifest", "mix.json", "--proxy", "proxy.json", "--output", output,
                    *SEARCH_ARGS, *extra, cwd=root, timeout=600)


def report(root: Path, output: str) -> dict:
    return json.loads((root / output / "search_report.json").read_text())


def children_of(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(value) for value in listing.split()]


@pytest.mark.slow
def test_a_killed_search_resumes_without_redoing_runs_and_ends_as_an_uninterrupted_one(mixture):
    whole = search(mixture, "whole", "--parallel", "2")  # two at a time: the same runs as one at a time
    assert whole.returncode == 0, whole.stderr
    expected = report(mixture, "whole")
    assert expected["trained"] == [f"run-{i:03d}" for i in range(RUNS)] and expected["kept"] == []

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fm9g_command("mix", "search", "--manifest", "mix.json", "--proxy", "proxy.json",
                                            "--output", "killed", *SEARCH_ARGS),
                               cwd=mixture, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = mixture / "killed" / "runs" / "run-000" / "result.json"
    deadline = time.monotonic() + 240
    trainers: list[int] = []
    while not (first.exists() and trainers):  # killed while a later proxy run is training (not between runs)
        assert process.poll() is None and time.monotonic() < deadline, "the search ended before it could be killed"
        time.sleep(0.05)
        trainers = children_of(process.pid) if first.exists() else []
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    assert not any(Path(f"/proc/{pid}").exists() and "fm9g" in Path(f"/proc/{pid}/cmdline").read_text()
                   for pid in trainers), "a proxy run outlived the search"
    finished = sorted(path.parent.name for path in (mixture / "killed" / "runs").glob("*/result.json"))
    assert "run-000" in finished and len(finished) < RUNS
    before = {name: ((mixture / "killed" / "runs" / name / "result.json").stat().st_mtime_ns,
                     (mixture / "killed" / "runs" / name / "result.json").read_text()) for name in finished}

    resumed = search(mixture, "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} of {RUNS} runs finished earlier" in resumed.stderr
    got = report(mixture, "killed")
    assert got["kept"] == finished and not set(got["trained"]) & set(finished)
    for name, (mtime, text) in before.items():
        path = mixture / "killed" / "runs" / name / "result.json"
        assert (path.stat().st_mtime_ns, path.read_text()) == (mtime, text)
    assert [run["target"] for run in got["runs"]] == [run["target"] for run in expected["runs"]]
    assert [run["weights"] for run in got["runs"]] == [run["weights"] for run in expected["runs"]]
    assert got["proposal"]["weights"] == expected["proposal"]["weights"]
    assert got["fit"]["spearman"] == expected["fit"]["spearman"]

    for result in (expected, got):
        shares = [run["weights"]["book"] for run in result["runs"]] + [result["proposal"]["weights"]["book"]]
        assert min(shares) >= 0.2 - 1e-6
    proposed = json.loads((mixture / "killed" / "mix.proposed.json").read_text())
    assert [entry["abs_weight"] for entry in proposed["datasets"]] == [got["proposal"]["weights"][name]
                                                                      for name in ("chat", "book")]
    assert (mixture / "killed" / "search.png").stat().st_size > 10_000

    again = search(mixture, "killed", "--seed", "4")
    assert again.returncode == 2 and "other settings (seed differ)" in again.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (("--min-share", "chat:0.7,book:0.5"), "the minimum shares sum to 1.2, more than 1"),
    (("--max-share", "chat:0.3,book:0.3"), "the largest shares the tasks may have sum to 0.6, less than 1"),
    (("--target", "medical"), "unknown task 'medical'"),
    (("--runs", "2"), "--runs must be at least 4"),
    (("--regressor", "tree"), "unknown regressor 'tree'"),
    (("--scale-data",), "--scale-data needs the full run's size"),
    (("--scale-data", "--budget-tokens", "100"), "--budget-tokens 100 is smaller than the proxy's 768 tokens"),
], ids=["minimums", "maximums", "target", "runs", "regressor", "scale-without-budget", "scale-below-proxy"])
def test_impossible_requests_are_refused_before_training(mixture, extra, message):
    result = run_fm9g("mix", "search", "--manifest", "mix.json", "--proxy", "proxy.json", "--output", "refused",
                      "--target", "chat", "--runs", "4", *extra, cwd=mixture)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (mixture / "refused" / "runs").exists()


def test_a_dataset_that_may_not_repeat_bounds_its_share(mixture, tmp_path):
    """book (allow_repeat false) holds ≈ 200 rows × 50 tokens: over a proxy of 400 × 2 × 128 tokens
    it may have at most ≈ 10 %, so a --min-share of 0.5 is impossible and said why."""
    document = json.loads((mixture / "mix.json").read_text())
    document["datasets"][1]["allow_repeat"] = False
    (mixture / "norepeat.json").write_text(json.dumps(document))
    write_train_config(mixture, mixture / "norepeat.json", name="long.json", train_iters=400, save_iters=400)
    result = run_fm9g("mix", "search", "--manifest", "norepeat.json", "--proxy", "long.json", "--output", "refused2",
                      "--target", "chat", "--runs", "4", "--min-share", "book:0.5", cwd=mixture)
    assert result.returncode == 2, result.stderr
    assert "task 'book' needs a share of at least 0.5 but may have at most 0.0" in result.stderr
    assert "allow_repeat false: 1 epoch" in result.stderr


def test_the_epoch_limits_can_be_checked_at_the_full_runs_budget(mixture):
    """--budget-tokens: book (allow_repeat false, ≈ 10,000 tokens) may not exceed ≈ 1 % of a
    1,000,000-token full run, although the 3-step proxy (768 tokens) would allow it any share."""
    document = json.loads((mixture / "mix.json").read_text())
    document["datasets"][1]["allow_repeat"] = False
    (mixture / "norepeat_full.json").write_text(json.dumps(document))
    result = run_fm9g("mix", "search", "--manifest", "norepeat_full.json", "--proxy", "proxy.json", "--output",
                      "refused3", "--target", "chat", "--runs", "4", "--min-share", "book:0.05",
                      "--budget-tokens", "1000000", cwd=mixture)
    assert result.returncode == 2, result.stderr
    assert "task 'book' needs a share of at least 0.05 but may have at most 0.01" in result.stderr
    assert "over a budget of 1,000,000 tokens" in result.stderr


@pytest.mark.slow
def test_refine_runs_are_drawn_around_the_first_proposal_and_a_rerun_keeps_them(mixture):
    """With --scale-data at a budget of 10 proxies' tokens, every proxy trains on a tenth of each dataset."""
    refined = search(mixture, "refined", "--refine", "2", "--parallel", "2", "--scale-data", "--budget-tokens", "7680")
    assert refined.returncode == 0, refined.stderr
    got = report(mixture, "refined")
    assert [run["run"] for run in got["runs"]] == [f"run-{i:03d}" for i in range(RUNS)] + ["refine-000", "refine-001"]
    first = got["first_proposal"]["weights"]["book"]
    around = [run["weights"]["book"] for run in got["runs"][RUNS:]]
    spread = [run["weights"]["book"] for run in got["runs"][:RUNS]]
    # Dirichlet(20 × 2 × share) around the first proposal: within ±0.2 of it for these runs' seeds,
    # while the first runs (concentration 1) spread over the bounds
    assert all(abs(share - first) < 0.2 for share in around), (first, around)
    assert max(spread) - min(spread) > 0.2, spread
    assert min(around + [got["proposal"]["weights"]["book"]]) >= 0.2 - 1e-6
    region = got["proposal"]["region"]
    book = got["tasks"].index("book")
    assert region["lower"][book] == pytest.approx(min(spread + around), abs=1e-6)

    for run in ("run-000", "refine-001"):
        proxy_manifest = json.loads((mixture / "refined" / "runs" / run / "mix.json").read_text())
        assert [entry["max_rows"] for entry in proxy_manifest["datasets"]] == [30, 20]  # of 300 chat, 200 book rows
    proposed = json.loads((mixture / "refined" / "mix.proposed.json").read_text())
    assert all("max_rows" not in entry for entry in proposed["datasets"])

    unscaled = search(mixture, "refined", "--refine", "2", "--budget-tokens", "7680")
    assert unscaled.returncode == 2 and "other settings (scale_data differ)" in unscaled.stderr
    again = search(mixture, "refined", "--refine", "2", "--scale-data", "--budget-tokens", "7680")
    assert again.returncode == 0, again.stderr
    assert "2 of 2 runs finished earlier (refine-000 … refine-001); training 0" in again.stderr
    rerun = report(mixture, "refined")
    assert rerun["trained"] == [] and rerun["proposal"]["weights"] == got["proposal"]["weights"]
