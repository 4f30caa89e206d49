"""gkd: Gradient Knowledge Distillation (Wang, Li, Sun, arXiv 2211.01071) for text classifiers.

The library is usable without the service: `DistillConfig` describes a run and `Trainer` runs it
(`from gkd import DistillConfig, Trainer`). Both names are resolved on first use, so `import gkd` and
`gkd.client` stay light (no torch, no transformers). The subpackages, one per concern: `gkd.method` (method
properties, losses, objective), `gkd.data`, `gkd.models`, `gkd.training`, `gkd.evaluation`, `gkd.export`,
`gkd.client` (HTTP only) and `gkd.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DistillConfig", "Trainer", "__version__"]

if TYPE_CHECKING:
    from gkd.config import DistillConfig
    from gkd.training.trainer import Trainer

_LAZY = {"DistillConfig": "gkd.config", "Trainer": "gkd.training.trainer"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gkd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
