"""pixelmill: datasets of prompts and images in, datasets of generated and edited images out.

The public API (api.py, docs/python-api.md) is imported lazily, so `import pixelmill` (and `pixelmill --help`)
stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pixelmill.version import VERSION

__version__ = VERSION
_API = ("Pipeline", "RunReport", "aedit", "agenerate", "arun", "arun_config", "edit", "generate", "run",
        "run_config")
__all__ = ["Pipeline", "RunConfig", "RunReport", "__version__", "aedit", "agenerate", "arun", "arun_config", "edit",
           "generate", "run", "run_config"]

if TYPE_CHECKING:
    from pixelmill.api import (
        Pipeline,
        RunReport,
        aedit,
        agenerate,
        arun,
        arun_config,
        edit,
        generate,
        run,
        run_config,
    )
    from pixelmill.config import RunConfig


def __getattr__(name: str) -> Any:
    if name in _API:
        from pixelmill import api

        return getattr(api, name)
    if name == "RunConfig":
        from pixelmill.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'pixelmill' has no attribute {name!r}")
