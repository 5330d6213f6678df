"""A local Ray cluster for the `--ray` tests: a head and two worker nodes on this machine, all on loopback.

`ray_cluster` is module-scoped (one cluster per test module: starting one takes seconds on a busy machine) and
small (one CPU a node). The test process joins it as a driver, so in-process runs find Ray connected; runs in a
subprocess get `RAY_ADDRESS` (`ray_env`). Every node and every driver sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
and 127.0.0.1, which keeps Ray on loopback (it otherwise takes the machine's routed address): no test traffic
leaves the machine. Tests that remove a node add their own first (`RayCluster.add_worker`), so the module's
cluster keeps its shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
# Read by Ray when it is imported (ray_constants): set before anything imports it, for this process and the
# nodes and drivers it starts.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@dataclass
class RayCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str

    def add_worker(self, **resources: Any) -> Any:
        node = self.cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, resources=resources or None)
        self.cluster.wait_for_nodes()
        return node

    def remove(self, node: Any) -> None:
        self.cluster.remove_node(node)

    @property
    def session_dir(self) -> Path:
        """Where the cluster's processes write their logs (searched for keys)."""
        return Path(self.cluster.head_node.get_session_dir_path())

    def env(self) -> dict[str, str]:
        """The environment of a driver in a subprocess."""
        return {"RAY_ADDRESS": self.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
        yield RayCluster(cluster, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
