"""Per-stack percentile normalisation and its exact inverse.

One (low, high) pair per stack, not per slice: per-slice normalisation would stretch the dim,
noisy deep slices up to full range and amplify exactly the noise we want to remove. Large or lazy
stacks are estimated from a bounded random sample read slice by slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dqlr.errors import DqlrError
from dqlr.io import Stack

# Slices visited when subsampling a large stack; spread over the whole depth.
MAX_SAMPLE_SLICES = 256


@dataclass(frozen=True)
class Normalization:
    """Intensity `low` maps to 0 and `high` to 1; stored with the percentiles that gave them."""

    low: float
    high: float
    p_low: float = 0.5
    p_high: float = 99.8

    def __post_init__(self) -> None:
        values = (self.low, self.high, self.p_low, self.p_high)
        if not all(math.isfinite(v) for v in values) or self.high <= self.low:
            raise DqlrError(
                f"invalid normalisation low={self.low}, high={self.high}: "
                "both must be finite and high above low"
            )

    def to_dict(self) -> dict[str, float]:
        return {
            "low": float(self.low),
            "high": float(self.high),
            "p_low": float(self.p_low),
            "p_high": float(self.p_high),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        try:
            return cls(
                low=float(d["low"]),
                high=float(d["high"]),
                p_low=float(d.get("p_low", 0.5)),
                p_high=float(d.get("p_high", 99.8)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DqlrError(
                f"invalid normalisation record {d!r}: needs numbers 'low' and 'high' ({error})"
            ) from None


def fit_normalization(
    stack: Stack | np.ndarray | Any,
    p_low: float = 0.5,
    p_high: float = 99.8,
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> Normalization:
    """Percentiles of the whole stack; above `max_samples` voxels, of a random subsample."""
    if not 0 <= p_low < p_high <= 100:
        raise DqlrError(f"percentiles must satisfy 0 <= low < high <= 100, got {p_low}, {p_high}")
    data = stack.data if isinstance(stack, Stack) else stack
    values = _sample(data, max_samples, seed)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]  # NaN/Inf must not decide the range
    if values.size == 0:
        raise DqlrError("cannot normalise a stack without finite values")
    low, high = np.percentile(values, [p_low, p_high])
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0  # constant stack: keep a valid, non-zero range
    return Normalization(low, high, float(p_low), float(p_high))


def _sample(data: Any, max_samples: int, seed: int) -> np.ndarray:
    """All voxels if few enough, else random voxels from slices spread over the depth."""
    shape = tuple(int(n) for n in data.shape)
    if math.prod(shape) <= max_samples or len(shape) < 3:
        return np.asarray(data[...]).reshape(-1)
    rng = np.random.default_rng(seed)
    depth = shape[0]
    if depth <= MAX_SAMPLE_SLICES:
        zs = np.arange(depth)
    else:
        zs = np.unique(np.linspace(0, depth - 1, MAX_SAMPLE_SLICES).round().astype(int))
    per_slice = max(1, max_samples // len(zs))
    parts = []
    for z in zs:
        plane = np.asarray(data[int(z)]).reshape(-1)
        if per_slice < plane.size:
            plane = plane[rng.integers(0, plane.size, per_slice)]
        parts.append(plane)
    return np.concatenate(parts)


def normalize(x: Any, norm: Normalization) -> np.ndarray:
    """(x - low) / (high - low) as float32, not clipped, so bright detail above `high` survives."""
    out = np.array(x, dtype=np.float32)
    out -= np.float32(norm.low)
    out /= np.float32(norm.high - norm.low)
    return out


def denormalize(y: Any, norm: Normalization, dtype: Any) -> np.ndarray:
    """Inverse of `normalize`; integers are rounded and clipped to the dtype's own range."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise ValueError(f"cannot denormalise to data type {dtype}")
    # float32 holds every integer up to 2**24 exactly; wider types need float64.
    wide = dtype.itemsize > 4 or (dtype.kind in "ui" and dtype.itemsize >= 4)
    out: np.ndarray = np.array(y, dtype=np.float64 if wide else np.float32)
    out = out * (norm.high - norm.low) + norm.low
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        top = float(info.max)
        if int(top) > info.max:  # int64/uint64: the float nearest the maximum overflows
            top = float(np.nextafter(top, 0.0))
        np.nan_to_num(out, copy=False, nan=0.0, posinf=top, neginf=info.min)
        np.rint(out, out=out)
        np.clip(out, info.min, top, out=out)
    return out.astype(dtype, copy=False)
