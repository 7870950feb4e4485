"""``fm9g prepare --executor ray`` on a real Ray cluster of three nodes on this machine
(``ray.cluster_utils.Cluster``): the same train/test split, byte for byte, as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepare_shard_helpers import assert_same_prepare, jsonl_input
from ray_helpers import local_cluster

from fm9g.prepare.prepare import prepare
from fm9g.prepare.shards import PrepareJob, prepare_all

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

cluster = pytest.fixture(scope="module", name="cluster")(local_cluster)


def test_a_ray_cluster_prepares_what_one_process_prepares(cluster, tmp_path: Path) -> None:
    source = jsonl_input(tmp_path / "raw" / "in.jsonl", rows=6000)
    options = {"map": {"input": "q", "output": "a"}}
    job = PrepareJob(str(source), str(tmp_path / "ray"), "jsonl", options, 0.1, 3, 5)
    outcomes, result = prepare_all(job, executor="ray", address=cluster.address, progress=False)
    assert [outcome.built for outcome in outcomes] == [True] * 5
    one = prepare(source, tmp_path / "one", "jsonl", options, test_size=0.1, seed=3, progress=False)
    assert_same_prepare(tmp_path / "one", tmp_path / "ray")
    assert result.first_dropped == one.first_dropped
    again, _ = prepare_all(job, executor="ray", address=cluster.address, progress=False)
    assert [outcome.built for outcome in again] == [False] * 5
