"""`--ray`: the same runs on a Ray cluster. The driver stays the engine; Ray only executes provider calls.

Its own layer, between the engine and the data packages: it may import providers, reading, writing and the
foundations, the engine and the front ends import it, and it never imports the engine. `import ray` happens only
in this package, and only when a run asks for `--ray` (the optional extra `pixelmill[ray]`).

- `connect.py`: joins the cluster of `RAY_ADDRESS` (else starts a local one) and says what it found.
- `remote.py`: API providers (OpenAI, Azure, Gemini, OpenAI-compatible, the emulator) send their calls from an
  actor pool over the nodes; results come back to the driver, which writes every file, so RUNDIR lives on the
  driver only and the cluster needs no shared filesystem.
- `local.py` (local models on every GPU) provides `cluster_provider(provider, settings)`, used for diffusers.

Remote-job providers (fal, Replicate, Black Forest Labs, Hugging Face) and batch modes stay on the driver: the
provider runs the work, the client only submits, polls and fetches, a few small requests per image that one
process carries at any rate limit, and their handles must be journaled by the driver between submit and poll
anyway. Moving them to actors would add a hop and a way to lose a submit's answer, and save nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping

from pixelmill.cluster.connect import ClusterInfo, connect
from pixelmill.errors import ConfigError
from pixelmill.providers.base import Provider, is_job_provider

__all__ = ["ClusterInfo", "connect", "on_cluster"]

LOCAL_FAMILIES = ("diffusers",)


async def on_cluster(provider: Provider, env: Mapping[str, str], info: ClusterInfo, concurrency: int,
                     notice: Callable[[str], None]) -> Provider:
    """The provider that sends `provider`'s calls on the cluster (itself where the driver is the better place)."""
    if is_job_provider(provider):
        notice(f"--ray: {provider.name} runs remote jobs: the driver submits and polls them (the provider does the "
               "work; a poll is one small request)")
        return provider
    if provider.family in LOCAL_FAMILIES:
        if importlib.util.find_spec("pixelmill.cluster.local") is None:
            raise ConfigError("--ray with local models: not built yet")
        local = importlib.import_module("pixelmill.cluster.local")  # ray2's pool of model copies, one per GPU
        made: Provider = local.cluster_provider(provider, provider.settings)
        return made
    from pixelmill.cluster.remote import remote_provider

    return await remote_provider(provider, env, info.nodes, concurrency, notice)
