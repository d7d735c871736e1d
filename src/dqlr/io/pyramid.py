"""OME-Zarr (NGFF 0.4) metadata and the lower levels of a multiscale pyramid.

The lower levels are computed after level 0 is complete, from the level above, one output chunk at
a time (block means), so a pyramid of a stack larger than memory is built in bounded memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dqlr.errors import DqlrError
from dqlr.io.layout import Channel

NGFF_VERSION = "0.4"
_AXIS = {
    "T": ("t", "time"),
    "C": ("c", "channel"),
    "Z": ("z", "space"),
    "Y": ("y", "space"),
    "X": ("x", "space"),
}


def level_factors(scales: Sequence[tuple[float, float, float]]) -> list[tuple[int, int, int]]:
    """Whole-number ZYX factors from each level to the next; DqlrError if a level is not a whole
    multiple of the one above (it could not be computed by block means)."""
    factors = []
    for above, below in itertools.pairwise(scales):
        ratio = [b / a for a, b in zip(above, below, strict=True)]
        whole = tuple(round(r) for r in ratio)
        if any(w < 1 or abs(r - w) > 1e-3 for r, w in zip(ratio, whole, strict=True)):
            raise DqlrError(
                f"pyramid levels scaled {above} and {below} are not whole multiples of each other; "
                "write the output as TIFF, or as Zarr from a single-level input"
            )
        factors.append((whole[0], whole[1], whole[2]))
    return factors


def level_shapes(
    shape: tuple[int, ...], axes: str, scales: Sequence[tuple[float, float, float]]
) -> list[tuple[int, ...]]:
    """Each level's shape: Z, Y, X divided by the level's factors, rounded up; T and C kept."""
    shapes = [tuple(shape)]
    for factors in level_factors(scales):
        per_axis = dict(zip("ZYX", factors, strict=True))
        shapes.append(tuple(math.ceil(n / per_axis.get(a, 1)) for a, n in zip(axes, shapes[-1], strict=True)))
    return shapes


def multiscales_attrs(
    name: str,
    axes: str,
    voxel_size: tuple[float, float, float] | None,
    scales: Sequence[tuple[float, float, float]],
) -> dict[str, Any]:
    """The `multiscales` entry: axes with units, one dataset per level with its scale."""
    axes_meta: list[dict[str, str]] = []
    for letter in axes:
        axis_name, kind = _AXIS[letter]
        axes_meta.append({"name": axis_name, "type": kind})
        if kind == "space" and voxel_size:
            axes_meta[-1]["unit"] = "micrometer"
    size = dict(zip("ZYX", voxel_size or (1.0, 1.0, 1.0), strict=True))
    datasets = []
    for level, factors in enumerate(scales):
        per_axis = dict(zip("ZYX", factors, strict=True))
        scale = [float(size[a] * per_axis[a]) if a in "ZYX" else 1.0 for a in axes]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    return {"version": NGFF_VERSION, "name": name, "axes": axes_meta, "datasets": datasets}


def omero_attrs(channels: Sequence[Channel], dtype: np.dtype) -> dict[str, Any]:
    """NGFF's `omero` rendering settings: each channel's label, colour and display window."""
    kind = np.dtype(dtype)
    low, high = (np.iinfo(kind).min, np.iinfo(kind).max) if kind.kind in "ui" else (None, None)
    entries = []
    for channel in channels:
        entry: dict[str, Any] = {"active": True, "color": channel.color or "FFFFFF"}
        if channel.name:
            entry["label"] = channel.name
        if channel.display_range is not None:
            start, end = channel.display_range
            entry["window"] = {
                "start": start,
                "end": end,
                "min": float(low) if low is not None else min(start, 0.0),
                "max": float(high) if high is not None else end,
            }
        entries.append(entry)
    return {"channels": entries, "rdefs": {"model": "color" if len(entries) > 1 else "greyscale"}}


def write_pyramid(
    root: Path, axes: str, scales: Sequence[tuple[float, float, float]], tile: int = 1024
) -> None:
    """Fill levels 1.. of the OME-Zarr group at `root` from level 0 ("0"), each from the level
    above by block means over its factors, one plane of at most tile x tile pixels at a time."""
    import zarr

    group = zarr.open_group(str(root), mode="r+")
    source: Any = group["0"]
    shapes = level_shapes(tuple(source.shape), axes, scales)
    for level, (factors, shape) in enumerate(zip(level_factors(scales), shapes[1:], strict=True), start=1):
        chunks = tuple(min(n, tile) if a in "YX" else 1 for a, n in zip(axes, shape, strict=True))
        target = group.create_array(
            str(level),
            shape=shape,
            dtype=source.dtype,
            chunks=chunks,
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        per_axis = [dict(zip("ZYX", factors, strict=True)).get(a, 1) for a in axes]
        grid = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
        for corner in itertools.product(*grid):
            out = tuple(slice(o, min(o + c, n)) for o, c, n in zip(corner, chunks, shape, strict=True))
            above = tuple(slice(s.start * f, s.stop * f) for s, f in zip(out, per_axis, strict=True))
            target[out] = block_mean(np.asarray(source[above]), per_axis, source.dtype)
        source = target


def block_mean(block: np.ndarray, factors: Sequence[int], dtype: Any) -> np.ndarray:
    """Means over blocks of `factors` along each axis (a block cut by the edge averages what it
    has), in `dtype` (integers rounded)."""
    out = block.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.diff(np.append(starts, out.shape[axis])).astype(np.float64)
        shape = [1] * out.ndim
        shape[axis] = len(starts)
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    kind = np.dtype(dtype)
    if kind.kind in "ui":
        info = np.iinfo(kind)
        return np.clip(np.round(out), info.min, info.max).astype(kind)
    return out.astype(kind)
