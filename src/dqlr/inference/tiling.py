"""Overlapping tiles over a 2-D slice and their seam-free blending.

Each tile's output is weighted by a ramp that falls to a small value at the tile border, so the
pixels a tile sees with the least context count least; weights are normalised where tiles overlap.
"""

from __future__ import annotations

import numpy as np


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, stop) spans covering [0, length), overlapping by at least `overlap`.

    Starts are multiples of `align` (the network's downsampling), so every tile sees the same
    stride phase as the whole slice would; the last tile is stretched by < align to reach the end.
    """
    if length <= tile:
        return [(0, length)]
    step = max((tile - overlap) // align * align, align)
    last = (length - tile) // align * align
    starts = list(range(0, last, step)) + [last]
    return [(start, min(start + tile, length) if start != last else length) for start in starts]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int, align: int = 1) -> list[tuple[slice, slice]]:
    height, width = shape
    return [
        (slice(y0, y1), slice(x0, x1))
        for y0, y1 in tile_spans(height, tile, overlap, align)
        for x0, x1 in tile_spans(width, tile, overlap, align)
    ]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    ramp = np.ones(length, np.float32)
    width = min(overlap, length // 2)
    if width > 0:
        rise = (np.arange(width, dtype=np.float32) + 0.5) / width
        if not at_start:
            ramp[:width] = rise
        if not at_end:
            ramp[-width:] = rise[::-1]
    return ramp


def blend_weights(region: tuple[slice, slice], shape: tuple[int, int], overlap: int) -> np.ndarray:
    """Weights of one tile: 1 inside, a linear ramp across overlaps, flat at the slice border."""
    ys, xs = region
    wy = _ramp(ys.stop - ys.start, overlap, ys.start == 0, ys.stop == shape[0])
    wx = _ramp(xs.stop - xs.start, overlap, xs.start == 0, xs.stop == shape[1])
    return wy[:, None] * wx[None, :]


class Blender:
    """Accumulates weighted tile outputs into one slice (or a stack of predicted slices)."""

    def __init__(self, shape: tuple[int, ...], overlap: int) -> None:
        self.shape2d = (shape[-2], shape[-1])
        self.overlap = overlap
        self.total = np.zeros(shape, np.float32)
        self.weight = np.zeros(self.shape2d, np.float32)

    def add(self, region: tuple[slice, slice], values: np.ndarray) -> None:
        weights = blend_weights(region, self.shape2d, self.overlap)
        self.total[..., region[0], region[1]] += values * weights
        self.weight[region] += weights

    def result(self) -> np.ndarray:
        return self.total / self.weight
