"""The DQLR network and its parts (encoder, recurrent cell, quantizer, generator).

The network's names load torch on first use, not with this package: a shipped model on a CPU is
described by its sidecar files and runs on ONNX Runtime without torch (see dqlr.model.checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqlr.model.network import DQLR, pad_to_multiple
    from dqlr.model.quantizer import VectorQuantizer

__all__ = ["DQLR", "VectorQuantizer", "pad_to_multiple"]


def __getattr__(name: str) -> Any:
    if name in ("DQLR", "pad_to_multiple"):
        from dqlr.model import network

        return getattr(network, name)
    if name == "VectorQuantizer":
        from dqlr.model.quantizer import VectorQuantizer

        return VectorQuantizer
    raise AttributeError(f"module 'dqlr.model' has no attribute {name!r}")
