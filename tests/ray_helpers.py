"""A Ray cluster of three nodes on this machine for the executor tests (``ray.cluster_utils.Cluster``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def local_cluster() -> Iterator[Any]:
    """A head and two worker nodes, one CPU each (separate raylets, object stores and workers);
    wrap it as a module fixture: ``cluster = pytest.fixture(scope="module")(local_cluster)``."""
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        local.add_node(num_cpus=1)
    local.wait_for_nodes()
    yield local
    local.shutdown()
