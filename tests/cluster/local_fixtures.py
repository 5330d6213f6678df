"""A local Ray cluster for the local-model tests (ray2's: `tests/cluster/conftest.py` is the API tests'): a head
and two worker nodes on 127.0.0.1, each worker offering one unit of the custom resource `gpu_slot` that stands
for a GPU (the machines here have none), and tiny random diffusers pipelines built on disk.

One cluster per test module (it takes about 12 s to start). Import the fixtures into a test module:
`from tests.cluster.local_fixtures import local_cluster, tiny_models  # noqa: F401`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Ray otherwise picks the machine's routed address even when told 127.0.0.1: no test traffic leaves loopback. Set
# before ray is imported (it reads it then), for the cluster's processes and for this driver alike.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

SLOT = "gpu_slot"  # the custom resource standing for one GPU


@dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={SLOT: 1}, node_ip_address="127.0.0.1",
                                     object_store_memory=100 * 1024 * 1024)
        self.workers.append(node)
        self.cluster.wait_for_nodes()
        return node

    def remove_worker(self, node: Any) -> None:
        self.workers.remove(node)
        self.cluster.remove_node(node)


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024 * 1024})
    made = LocalCluster(cluster)
    try:
        for _ in range(2):
            made.add_worker()
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        yield made
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("diffusers")
    from tests.tiny_pipelines import build_sd

    root = tmp_path_factory.mktemp("tiny-models")
    return {"sd": str(build_sd(root / "sd"))}
