"""Joining a Ray cluster for `--ray`: the one place that starts or reaches Ray, and says what it found.

`connect` joins the cluster that `RAY_ADDRESS` names (Ray's own convention: `ray.init` reads it), or starts a
local one on loopback when it is unset; a driver already connected (a notebook that called `ray.init`) is used
as it is. Ray is an optional extra: without it `--ray` is a `ConfigError` (exit 2) saying the pip command,
before anything is sent. Actors' own log lines stay in the cluster's log files (`log_to_driver=False`): the
driver's terminal shows pixelmill's progress, not Ray's workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType

from pixelmill.errors import ConfigError

INSTALL = "--ray needs the extra: pip install 'pixelmill[ray]'"


def import_ray() -> ModuleType:
    """Ray, or the `ConfigError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What the driver sees of the cluster when a run starts (its status line)."""

    address: str  # "local" for a cluster this process started
    nodes: list[str]  # node ids of the live nodes
    cpus: float
    gpus: float

    def line(self) -> str:
        where = "a local Ray cluster" if self.address == "local" else f"the Ray cluster at {self.address}"
        n = len(self.nodes)
        return (f"--ray: {where}: {n} node{'s' if n != 1 else ''}, {self.cpus:g} CPUs, {self.gpus:g} GPUs; the "
                "driver keeps the journal, limits and budget, the nodes send the calls")


def connect() -> ClusterInfo:
    """Join the cluster of `RAY_ADDRESS` (else start a local one) and describe it."""
    ray = import_ray()
    address = os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        kwargs: dict[str, object] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                     "configure_logging": True}
        if address is None:
            # A cluster of this process only: on loopback, with no dashboard to serve.
            kwargs.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        elif _on_loopback(address):
            # A cluster on this machine's loopback: the driver joins it there too (Ray otherwise takes the
            # machine's routed address, and the nodes would call the driver back through it).
            kwargs.update(_node_ip_address="127.0.0.1")
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--ray: cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}; start it "
                              "(`ray start --head`) or unset RAY_ADDRESS to run on a local one") from None
        address = address or "local"
    else:  # joined earlier in this process (a notebook's own ray.init, or an earlier run)
        address = str(ray.get_runtime_context().gcs_address)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    return ClusterInfo(address, [str(node["NodeID"]) for node in alive],
                       float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)))


def _on_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")

