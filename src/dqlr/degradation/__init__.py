"""How a stack degrades with depth, estimated from the stack alone, and how to reproduce it."""

from dqlr.degradation.core import (
    DepthDegradation,
    degrade,
    estimate_degradation,
    estimate_noise,
    make_pairs,
)

__all__ = ["DepthDegradation", "degrade", "estimate_degradation", "estimate_noise", "make_pairs"]
