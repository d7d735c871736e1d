"""dqlr: restore the deep, degraded slices of confocal z-stacks with DQLR.

The public API mirrors the command line: simulate, train, enhance, read and write stacks.
Heavy modules are imported on first use so `import dqlr` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "read_stack": "dqlr.io",
    "write_stack": "dqlr.io",
    "Stack": "dqlr.io",
    "fit_normalization": "dqlr.normalize",
    "normalize": "dqlr.normalize",
    "denormalize": "dqlr.normalize",
    "simulate_plant": "dqlr.simulate",
    "simulate_dataset": "dqlr.simulate",
    "Config": "dqlr.config",
    "load_config": "dqlr.config",
    "train": "dqlr.train",
    "enhance": "dqlr.enhance",
    "enhance_file": "dqlr.enhance",
    "load_model": "dqlr.checkpoint",
    "DqlrError": "dqlr.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dqlr' has no attribute {name!r}")
