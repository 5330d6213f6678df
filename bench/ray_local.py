"""Local models on a Ray cluster: images per second with 1 and 2 model copies (actors), tiny pipeline, CPU.

    PYTHONPATH=src .venv/bin/python -m bench.ray_local                 # about 2 minutes on 2 cores
    PYTHONPATH=src .venv/bin/python -m bench.ray_local --images 96 --steps 8 --batch-size 2

A local cluster on 127.0.0.1 (a head and two worker nodes, each worker offering one `gpu_slot`, the resource
that stands for a GPU here) runs `cluster_provider` (pixelmill/cluster/local.py) with `ray_actors` 1 and then 2:
`call` once per row with as many rows in flight as the provider asks for (`preferred_concurrency`, as the
engine does). The clock starts once every copy has answered a first batch (actor start and model load are
outside it, and printed apart), and stops at the last image. For scale, the same rows through the
single-machine provider in this process, torch on one thread as each actor has (Ray's OMP_NUM_THREADS for an
actor without CPUs). On two shared cores two CPU copies cannot double anything: the figure that matters here is
that the second copy is used and adds what the cores allow; per GPU, the copies are independent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: loopback only


async def _measure(provider: Any, model: str, images: int, warm: int, steps: int) -> tuple[float, float]:
    """(seconds until every copy answered its first batch, images per second after that)."""
    from pixelmill.params import ImageParams
    from pixelmill.providers.base import ImageRequest

    spec = provider.spec_for(model)
    plan = provider.plan(spec, ImageParams(size="32x32", steps=steps), "generate")

    def request(i: int) -> ImageRequest:
        return ImageRequest(task="generate", model=model, prompt=f"a small red cube, view {i}", params=plan.params,
                            row=i)

    started = time.perf_counter()
    await asyncio.gather(*(provider.call(request(-1 - i), spec) for i in range(warm)))
    ready = time.perf_counter() - started
    limit = asyncio.Semaphore(int(getattr(provider, "preferred_concurrency", 1)))

    async def one(i: int) -> None:
        async with limit:
            await provider.call(request(i), spec)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(images)))
    return ready, images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    import ray
    import torch
    from ray.cluster_utils import Cluster
    from tests.tiny_pipelines import build_sd

    from pixelmill.cluster.local import cluster_provider
    from pixelmill.providers.base import ProviderSettings
    from pixelmill.providers.diffusers.provider import DiffusersProvider

    model = str(build_sd(Path(tempfile.mkdtemp(prefix="pixelmill-bench-")) / "sd"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={"gpu_slot": 1}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        print(f"tiny SD pipeline, 32x32, {args.steps} steps, batch_size {args.batch_size}, {args.images} images, "
              f"{os.cpu_count()} cores")
        torch.set_num_threads(1)
        single = DiffusersProvider(ProviderSettings(options={"devices": "cpu", "batch_size": args.batch_size}), {})
        _, rate, _ = asyncio.run(_run(single, model, args, warm=args.batch_size))
        print(f"{'one machine, in process (1 thread):':<38}{rate:6.1f} images/s")
        for actors in (1, 2):
            options = {"batch_size": args.batch_size, "ray_resource": "gpu_slot", "ray_actors": actors}
            local = DiffusersProvider(ProviderSettings(options=options), {})
            provider = cluster_provider(local)
            ready, rate, used = asyncio.run(_run(provider, model, args, warm=actors * args.batch_size * 2))
            label = f"Ray, {actors} model {'copy' if actors == 1 else 'copies'} ({used} used):"
            print(f"{label:<38}{rate:6.1f} images/s   (start and load: {ready:.1f} s)")
    finally:
        ray.shutdown()
        cluster.shutdown()


async def _run(provider: Any, model: str, args: argparse.Namespace, warm: int) -> tuple[float, float, int]:
    """(start and load seconds, images per second, model copies that ran batches), the provider closed after."""
    try:
        ready, rate = await _measure(provider, model, args.images, warm, args.steps)
        pool = getattr(provider, "pool", None)
        return ready, rate, len(pool.used) if pool is not None else 1
    finally:
        await provider.aclose()


if __name__ == "__main__":
    main()
