"""pixelmill: datasets of prompts and images in, datasets of generated and edited images out.

The public API is imported lazily, so `import pixelmill` (and `pixelmill --help`) stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pixelmill.version import VERSION

__version__ = VERSION
__all__ = ["RunConfig", "RunReport", "__version__", "arun", "edit", "generate", "run_config"]

if TYPE_CHECKING:
    from pixelmill.api import RunReport, arun, edit, generate, run_config
    from pixelmill.config import RunConfig


def __getattr__(name: str) -> Any:
    if name in ("RunReport", "arun", "edit", "generate", "run_config"):
        from pixelmill import api

        return getattr(api, name)
    if name == "RunConfig":
        from pixelmill.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'pixelmill' has no attribute {name!r}")
