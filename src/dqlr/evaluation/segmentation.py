"""Segmentation as a score: how many cells a standard membrane segmentation finds, slice by slice.

Biologists enhance SAM stacks to segment the cells of the deep layers; PSNR is only a proxy. Each
slice is segmented by a seeded watershed (scikit-image): smoothed, seeds are the minima deeper
than `h` of the robust intensity range (the dark cell interiors), the watershed floods from them,
and segments mostly outside the tissue are dropped. The tissue is where the slice's glow rises
above its own dark level (`dqlr.tissue.tissue_mask` with that level): deep slices are tissue from
edge to edge, and a mask relative to their darkest glow cut through them (on three training
plants it dropped 15 of every 100 true cells of the clean deepest third).

Against true labels (the simulator's), per slice: the share of true cells matched by a segment at
IoU >= 0.5 (a match at IoU > 0.5 is one-to-one), the adapted Rand error, and how many true cells
were split (two segments hold 20 % or more of each) and how many segments merged cells (each holds
most of two or more).

The default parameters are the ones that found the most cells on the validation plant averaged
over the methods compared (benchmarks/segmentation.py, which also tunes them per method): one
yardstick for raw, smoothed and enhanced stacks alike. Seeds from a distance transform of a locally
thresholded interior, a ridge-filter (Sato) boundary map and a compact watershed were tried on the
validation plant as well and found no more cells (within a point), so the plain one stays.

`segment_stack(..., volume=True)` floods the whole stack at once instead (a 3-D seeded watershed,
each slice scaled by its own range first): a cell the slice only grazes, or whose wall lies flat in
the slice, takes its seed and borders from the slices above and below. On the validation plant's
clean deepest third it found 85 % of the true cells against 82 % slice by slice, and on the raw
input 70 % against 62 %; its adapted Rand error is higher, and after Richardson-Lucy it finds fewer
cells (benchmarks/results/segmentation.md has both for every method).

What no per-slice segmentation finds: 8-10 % of the true cells of a deep slice are under 20 px
(the slice grazes them), and cells cut where walls lie nearly flat in the slice sit under a bright
band instead of inside walls. Even one seed per true cell, placed by the labels, finds about 85 %
of the cells of a clean deep slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.metrics import adapted_rand_error
from skimage.morphology import h_minima
from skimage.segmentation import watershed

from dqlr.errors import DqlrError
from dqlr.tissue import tissue_mask

MATCH_IOU = 0.5
SPLIT_PART = 0.2  # a cell is split when two or more segments each hold this share of it
MERGE_PART = 0.5  # a segment merges cells when it holds this share of each of two or more
EMPTY_RANGE = 8.0  # a smoothed slice spanning fewer noise sigmas (p1-p99) has no cells; noise alone: ~5
# Immerkaer's noise kernel (as in dqlr.evaluation.metrics.noise_level): blind to ramps, L2 norm 6
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


@dataclass(frozen=True)
class SegmentationSettings:
    """The seeded watershed's parameters (pixels, and a share of the slice's p1-p99 range)."""

    sigma_px: float = 2.0
    h: float = 0.02
    min_cell_px: int = 16
    sigma_z_px: float = 0.0  # smoothing across slices (volume segmentation only)


def _smoothed_noise(image: np.ndarray, sigma_px: float) -> float:
    """The pixel noise sigma (median absolute high-pass residual) left after Gaussian smoothing by
    sigma_px, as for white noise: smoothing divides it by 2 * sqrt(pi) * sigma."""
    residual = ndimage.convolve(image, _NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
    return float(np.median(np.abs(residual)) / 0.6745 / 6.0 / (2 * np.sqrt(np.pi) * sigma_px))


def segment_slice(image: np.ndarray, settings: SegmentationSettings = SegmentationSettings()) -> np.ndarray:
    """Cell labels of one membrane slice (0 outside the tissue).

    A slice whose smoothed intensities span no more than noise does (empty slices above the
    sample) has no cells: without this the watershed would cut its noise into "cells".
    """
    image = np.asarray(image, np.float64)
    smooth = ndimage.gaussian_filter(image, settings.sigma_px)
    low, high = np.percentile(smooth, [1, 99])
    if _no_cells(image, low, high, settings):
        return np.zeros(smooth.shape, np.int32)
    labels = _flood((smooth - low) / (high - low), settings)
    return _inside_tissue(labels, image, low).astype(np.int32)


def _no_cells(image: np.ndarray, low: float, high: float, settings: SegmentationSettings) -> bool:
    """Whether a slice's smoothed p1-p99 range is no more than its noise spans (an empty slice)."""
    return bool(high - low <= EMPTY_RANGE * _smoothed_noise(np.asarray(image, np.float64), settings.sigma_px))


def _flood(scaled: np.ndarray, settings: SegmentationSettings) -> np.ndarray:
    """Seeded watershed of a scaled slice or volume: seeds are the minima deeper than h; seeds of
    specks are dropped and the flood run again, so their neighbours take them."""
    seeds = label(h_minima(scaled, settings.h))
    labels = watershed(scaled, seeds)
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < settings.min_cell_px)
    if small[small > 0].size:
        seeds[np.isin(labels, small) & (seeds > 0)] = 0
        labels = watershed(scaled, seeds)
    return labels


def _inside_tissue(labels: np.ndarray, image: np.ndarray, low: float) -> np.ndarray:
    """A slice's segments without those mostly outside the tissue (there are no cells there).

    Judged per segment, not per pixel, so a dark cell at the slice's edge (where the mask, a heavy
    smoothing, dips) is kept whole; the mask's dark level is the slice's own (`low`), so a slice
    that is tissue from edge to edge keeps its large dark cells too.
    """
    inside = tissue_mask(image, background=float(low))
    counts = np.bincount(labels.ravel())
    share = np.bincount(labels.ravel(), weights=inside.ravel()) / np.maximum(counts, 1)
    labels[share[labels] < 0.5] = 0
    return labels


def segment_stack(
    stack: Any, settings: SegmentationSettings = SegmentationSettings(), volume: bool = False
) -> np.ndarray:
    """Cell labels of a ZYX membrane stack: slice by slice (`segment_slice`), or with `volume` as one
    3-D seeded watershed (the whole stack is held in memory as float32).

    Every slice is scaled by its own p1-p99 range before the flood, as a slice alone would be:
    deep slices are dimmer, and one range for the stack would leave their walls too faint to stop
    the flood. Slices with no cells and segments mostly outside the tissue are dropped slice by
    slice, as in `segment_slice`.
    """
    if len(stack.shape) != 3:
        raise DqlrError(f"segmenting a stack needs a ZYX stack, got shape {tuple(stack.shape)}")
    if not volume:
        return np.stack(
            [segment_slice(np.asarray(stack[z], np.float64), settings) for z in range(stack.shape[0])]
        )
    data = np.asarray(stack, np.float32)
    smooth = ndimage.gaussian_filter(data, (settings.sigma_z_px, settings.sigma_px, settings.sigma_px))
    low, high = (np.percentile(smooth, q, axis=(1, 2)) for q in (1, 99))
    empty = np.array([_no_cells(*values, settings) for values in zip(data, low, high, strict=True)])
    labels = _flood((smooth - low[:, None, None]) / np.maximum(high - low, 1e-12)[:, None, None], settings)
    labels[empty] = 0
    for z in np.flatnonzero(~empty):
        labels[z] = _inside_tissue(labels[z], data[z], low[z])
    return labels.astype(np.int32)


def _overlaps(truth: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of true cells (rows, label 0 dropped) and segments (columns, 0 dropped)."""
    t_ids, t_index = np.unique(truth, return_inverse=True)
    f_ids, f_index = np.unique(found, return_inverse=True)
    table = np.zeros((len(t_ids), len(f_ids)), np.int64)
    np.add.at(table, (t_index.ravel(), f_index.ravel()), 1)
    return table[t_ids > 0][:, f_ids > 0], t_ids[t_ids > 0], f_ids[f_ids > 0]


def _iou(truth: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every true cell (rows) with every segment (columns), each true cell's share in each
    segment, and the true cells' ids (label 0 left out on both sides)."""
    table, t_ids, f_ids = _overlaps(truth, found)
    t_area = np.bincount(np.searchsorted(t_ids, truth[truth > 0]), minlength=len(t_ids))
    f_area = np.bincount(np.searchsorted(f_ids, found[found > 0]), minlength=len(f_ids))
    iou = table / np.maximum(t_area[:, None] + f_area[None, :] - table, 1)
    return iou, table / np.maximum(t_area[:, None], 1), t_ids


def matched_cells(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Ids of the true cells that a segment overlaps at IoU >= MATCH_IOU."""
    iou, _, t_ids = _iou(truth, found)
    return t_ids[iou.max(1) >= MATCH_IOU] if iou.size else t_ids[:0]


def slice_scores(truth: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """matched (share of true cells found at IoU >= 0.5), rand_error, split and merged counts."""
    iou, share, t_ids = _iou(truth, found)
    if not len(t_ids):
        return {"matched": float("nan"), "rand_error": float("nan"), "split": 0.0, "merged": 0.0}
    if iou.size:
        matched = float((iou.max(1) >= MATCH_IOU).mean())
        split = float(((share > SPLIT_PART).sum(1) >= 2).sum())
        merged = float(((share > MERGE_PART).sum(0) >= 2).sum())
    else:
        matched, split, merged = 0.0, 0.0, 0.0
    error = float(adapted_rand_error(truth.astype(np.int64), found.astype(np.int64))[0])
    return {"matched": matched, "rand_error": error, "split": split, "merged": merged}


SCORES = ("matched", "rand_error", "split", "merged")
