"""``fm9g index --executor ray`` on a real Ray cluster of three nodes on this machine
(``ray.cluster_utils.Cluster``): the same sharded index as one process, and a worker killed with
SIGKILL mid-task is retried with an identical result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ray_helpers import local_cluster
from shard_helpers import assert_same_rows, big_input, mixed_inputs, tree, wait_for_temp_data

from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.executors import build_all
from fm9g.index.reader import IndexedDataset
from fm9g.index.sharded_reader import ShardedDataset

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


cluster = pytest.fixture(scope="module", name="cluster")(local_cluster)


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"workers": 1, "progress": False, "tokenizer": "byte", **changes})


def test_a_ray_cluster_builds_the_index_one_process_builds(cluster, tmp_path: Path) -> None:
    inputs = mixed_inputs(tmp_path / "raw")
    outcomes = build_all(inputs, tmp_path / "ray", 5, _options(), executor="ray", address=cluster.address)
    assert [outcome.built for outcome in outcomes] == [True] * 5
    build_all(inputs, tmp_path / "local", 5, _options())
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    single = build_index(inputs, tmp_path / "one", _options(workers=2)).output
    assert_same_rows(IndexedDataset(single), ShardedDataset(tmp_path / "ray"))
    again = build_all(inputs, tmp_path / "ray", 5, _options(), executor="ray", address=cluster.address)
    assert [outcome.built for outcome in again] == [False] * 5


def test_a_worker_killed_mid_task_is_retried_with_an_identical_result(cluster, tmp_path: Path,
                                                                     hf_tokenizer_dir: Path) -> None:
    source = big_input(tmp_path / "raw" / "big.jsonl", 4.5)
    options = _options(tokenizer=f"hf:{hf_tokenizer_dir}", chunk_bytes=256 << 10)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            build_all([source], tmp_path / "ray", 3, options, executor="ray", address=cluster.address)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    driver = threading.Thread(target=drive)
    driver.start()
    pid = wait_for_temp_data(tmp_path / "ray", "shard-00001-of-00003", driver.is_alive)
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=240)
    assert not driver.is_alive() and not errors, errors
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not list((tmp_path / "ray").glob(".shard-*"))
    single = build_index([source], tmp_path / "one", BuildOptions(tokenizer=options.tokenizer, workers=2, progress=False))
    assert_same_rows(IndexedDataset(single.output), ShardedDataset(tmp_path / "ray"))


def test_without_ray_the_flag_says_how_to_install_it(tmp_path: Path) -> None:
    """``sys.modules['ray'] = None`` makes ``import ray`` fail as it does where Ray is not installed."""
    source = mixed_inputs(tmp_path / "raw")[0]
    code = ("import sys; sys.modules['ray'] = None; from fm9g.cli import main; "
            f"sys.exit(main(['index', '--input', {str(source)!r}, '--output', {str(tmp_path / 'out')!r}, "
            "'--shards', '2', '--executor', 'ray']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "pip install 'fm9g[ray]'" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
