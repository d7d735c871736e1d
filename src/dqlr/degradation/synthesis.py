"""Synthesising deep-looking slices from sharp upper ones, and training pairs made that way.

`degrade` applies the blur, halo, attenuation and background of a target depth and tops up the
noise so that it matches that depth; `make_pairs` turns a stack into (degraded, original) pairs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.degradation.model import MAX_HALO, DepthDegradation
from dqlr.degradation.ops import blur_reach, gaussian_fft, kernel_energy, read_plane, stack_array
from dqlr.errors import DqlrError
from dqlr.tissue import TISSUE_SIGMA_PX, tissue_mask

PARAM_KEYS = (
    "blur_sigma_px",
    "halo_fraction",
    "halo_sigma_px",
    "attenuation",
    "background",
    "source_background",
    "gain",
    "read_noise",
    "offset",
)


MEAN_REACH = 4  # pixels the local means of degrade look beyond a pixel (sigma 1, truncated at 4)


def _room(region: tuple[slice, slice], shape: tuple[int, ...]) -> int:
    """Pixels between `region` and the nearest edge of the last two axes of `shape`."""
    (ys, xs), (n_y, n_x) = region, shape[-2:]
    return min(ys.start, xs.start, n_y - ys.stop, n_x - xs.stop)


def degrade(
    slices: np.ndarray,
    params_at_depth: dict[str, float],
    rng: np.random.Generator,
    noise: bool = True,
    region: tuple[slice, slice] | None = None,
    noise_kept: float = 1.0,
) -> np.ndarray:
    """Make (sharp, noisy) upper slices look like a deeper slice; float32 in the input's units.

    params_at_depth comes from DepthDegradation.at(depth) or .relative(source, depth). The signal
    above the source background is blurred (Gaussian), partly spread into the halo, scaled by the
    attenuation and put on the target background. The input's own noise is blurred and scaled
    too, so only the missing variance is added: var_target(mean) minus what is left of the
    input's, never negative; as shot noise (Poisson, skewed like real data) plus Gaussian read
    noise for the part of the read noise the blur removed. Works on (Y, X) or (..., Y, X).
    `region` (of the last two axes): only that part is returned, blurred with all of `slices` around
    it and with noise drawn for it alone; when the margins around it are as wide as the blur
    reaches, the blur needs no padding and runs in float32. Training pairs keep a crop of a block
    with margins: this made a depth-aware batch 2-3x as fast (benchmarks/results/train_speed.md).
    `noise_kept`: the share of the input's own noise variance still in `slices`, below 1 when
    they were filtered before (make_pairs' blur along z), so the noise top-up accounts for it.
    """
    missing = [k for k in PARAM_KEYS if k not in params_at_depth]
    if missing:
        raise DqlrError(f"degradation parameters lack {', '.join(missing)}")
    p = {k: float(params_at_depth[k]) for k in PARAM_KEYS}
    x = np.asarray(slices, dtype=np.float64)
    if x.ndim < 2:
        raise DqlrError(f"degrade needs (Y, X) slices, got shape {x.shape}")
    s, h, a = (
        max(p["blur_sigma_px"], 0.0),
        float(np.clip(p["halo_fraction"], 0.0, MAX_HALO)),
        p["attenuation"],
    )
    terms = [(a * (1.0 - h), s)]
    if h > 0:
        terms.append((a * h, math.hypot(s, p["halo_sigma_px"])))
    signal = x - p["source_background"]
    if region is not None and _room(region, x.shape) >= blur_reach(terms):
        expected = gaussian_fft(signal.astype(np.float32), terms, padded=False) + p["background"]
    else:
        expected = gaussian_fft(signal, terms) + p["background"]
    keep: tuple[Any, ...] = (Ellipsis,)
    if region is not None:  # the region and the pixels the local means below look at
        ys, xs = region
        y0, x0 = max(ys.start - MEAN_REACH, 0), max(xs.start - MEAN_REACH, 0)
        near = (Ellipsis, slice(y0, ys.stop + MEAN_REACH), slice(x0, xs.stop + MEAN_REACH))
        x, expected = x[near], expected[near]
        keep = (Ellipsis, slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    if not noise:
        return expected[keep].astype(np.float32)
    gain, read2, offset = max(p["gain"], 0.0), p["read_noise"] ** 2, p["offset"]
    # local means (lightly smoothed, so that noise does not decide how much noise to add)
    axes = [0.0] * (x.ndim - 2) + [1.0, 1.0]
    mean_in, mean_out = ndimage.gaussian_filter(x, axes), ndimage.gaussian_filter(expected, axes)
    x, expected, mean_in, mean_out = x[keep], expected[keep], mean_in[keep], mean_out[keep]
    # share of the input's white noise variance left after the filter (and any filtering before)
    kept = noise_kept * kernel_energy(terms)
    left = kept * (gain * np.maximum(mean_in - offset, 0.0) + read2)
    target = gain * np.maximum(mean_out - offset, 0.0) + read2
    read_add = read2 * max(1.0 - kept, 0.0)
    shot_add = np.maximum(target - left - read_add, 0.0)
    out = expected + rng.normal(0.0, math.sqrt(read_add), x.shape) if read_add > 0 else expected
    if gain > 0:
        photons = shot_add / gain**2
        out = out + gain * (rng.poisson(photons) - photons)
    else:
        out = out + rng.normal(0.0, 1.0, x.shape) * np.sqrt(shot_add)
    return out.astype(np.float32)


def tissue_centres(stack: Any, degradation: DepthDegradation, window: int) -> np.ndarray:
    """(y, x) pixels inside the tissue in the slices make_pairs takes windows of `window` from, for
    crops that show cells. The same for every call on a stack: samplers compute it once and pass it
    to make_pairs (recomputed per batch, it took a fifth of a depth-aware training step).

    A fixed 8-pixel smoothing (the mask's default, 2 µm at 0.25 µm pixels) is enough to tell tissue
    from background.
    """
    data = stack_array(stack)
    first, stop = _source_range(degradation, window)
    total = np.zeros(data.shape[1:], dtype=bool)
    for z in range(first, min(stop, data.shape[0])):
        total |= tissue_mask(read_plane(data, z), TISSUE_SIGMA_PX, float(degradation.background[z]))
    return np.argwhere(total)


def _source_range(degradation: DepthDegradation, window: int) -> tuple[int, int]:
    """Slices windows start in: the reference, and a quarter of its length more."""
    first, stop = degradation.reference_slices
    return first, max(stop + max(1, (stop - first) // 4), first + window)


def make_pairs(
    stack: Any,
    degradation: DepthDegradation,
    count: int,
    crop: int,
    window: int,
    rng: np.random.Generator,
    centres: np.ndarray | None = None,
    columns: tuple[int, int] | None = None,
    axial_px: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training pairs from the sharp upper slices: (degraded, original, target depth).

    Windows of `window` consecutive slices start in the reference range (or a little below it,
    down to a quarter of its length more); each window is degraded as a whole to one depth drawn
    uniformly from the slices below that source range, using the window's middle slice as the
    source so that a source below the reference is not degraded twice. Crops are centred on tissue
    when there is any, and degraded with a margin so the blur and halo see real neighbours.
    Returns float32 (count, window, crop, crop) twice and int64 depths (count,). `centres`: what
    tissue_centres gives for this stack, degradation and window (computed here when not given).
    `columns` ([first, stop)) keeps the crops inside that band of x (the blur's margin may reach out).
    `axial_px`: slices of blur along z (Gaussian sigma) added per pixel of added lateral blur, as
    deep slices mix their neighbours (0: lateral blur only); the window is read with the slices
    that blur reaches, reflected at the stack's ends.
    """
    data = stack_array(stack)
    n_z, n_y, n_x = data.shape
    if count < 1 or window < 1 or crop < 1:
        raise DqlrError(f"count, window and crop must be at least 1, got {count}, {window}, {crop}")
    x_first, x_stop = columns or (0, n_x)
    if crop > min(n_y, x_stop - x_first):
        raise DqlrError(f"crop {crop} is larger than the slices ({n_y} x {x_stop - x_first})")
    if len(degradation.depth_index) != n_z:
        raise DqlrError(f"the degradation has {len(degradation.depth_index)} slices, the stack {n_z}")
    first, stop = _source_range(degradation, window)
    if stop >= n_z:
        raise DqlrError(f"no slices left below the source slices {first}..{stop - 1} of a {n_z}-slice stack")
    if centres is None:
        centres = tissue_centres(data, degradation, window)
    if columns is not None:
        centres = centres[(centres[:, 1] >= x_first) & (centres[:, 1] < x_stop)]
    margin = int(
        math.ceil(3.0 * math.hypot(float(degradation.blur_sigma_px.max()), degradation.halo_sigma_px))
    )
    reach_z = int(math.ceil(3.0 * axial_px * float(degradation.blur_sigma_px.max()))) if axial_px > 0 else 0
    degraded = np.empty((count, window, crop, crop), dtype=np.float32)
    targets = np.empty((count, window, crop, crop), dtype=np.float32)
    depths = np.empty(count, dtype=np.int64)
    for i in range(count):
        start = int(rng.integers(first, stop - window + 1))
        depth = int(rng.integers(stop, n_z))
        if len(centres):
            cy, cx = centres[int(rng.integers(len(centres)))]
            y = int(np.clip(cy - crop // 2, 0, n_y - crop))
            x = int(np.clip(cx - crop // 2, x_first, x_stop - crop))
        else:
            y, x = int(rng.integers(0, n_y - crop + 1)), int(rng.integers(x_first, x_stop - crop + 1))
        y0, x0 = max(y - margin, 0), max(x - margin, 0)
        y1, x1 = min(y + crop + margin, n_y), min(x + crop + margin, n_x)
        block = _read_block(data, start - reach_z, start + window + reach_z, (slice(y0, y1), slice(x0, x1)))
        # full margins (reflected where the stack ends), so the blur needs no padding of its own
        widths = [
            (0, 0),
            (y0 - (y - margin), y + crop + margin - y1),
            (x0 - (x - margin), x + crop + margin - x1),
        ]
        block = np.pad(block, widths, mode="reflect") if any(w != (0, 0) for w in widths) else block
        params = degradation.relative(start + window // 2, depth)
        inner = (slice(margin, margin + crop), slice(margin, margin + crop))
        source, kept = _blur_along_z(block, axial_px * params["blur_sigma_px"], reach_z, window)
        degraded[i] = degrade(source, params, rng, region=inner, noise_kept=kept)
        targets[i] = block[(slice(reach_z, reach_z + window), *inner)]
        depths[i] = depth
    return degraded, targets, depths


def _read_block(data: Any, first: int, stop: int, box: tuple[slice, slice]) -> np.ndarray:
    """Slices first..stop-1 of `box` as float64, reflected (without repeating the end slice) where
    they lie beyond the stack; reads only the slices inside it (lazy stacks read once)."""
    n_z = int(data.shape[0])
    wanted = np.arange(first, stop)
    period = max(2 * (n_z - 1), 1)
    folded = np.abs(wanted) % period
    folded = np.where(folded >= n_z, period - folded, folded)
    low, high = int(folded.min()), int(folded.max()) + 1
    read = np.asarray(data[(slice(low, high), *box)], dtype=np.float64)
    return read if first == low and stop == high else read[folded - low]


def _blur_along_z(block: np.ndarray, sigma: float, reach: int, window: int) -> tuple[np.ndarray, float]:
    """The `window` slices after `reach` of `block`, blurred along z by a Gaussian of `sigma` slices
    (truncated within `reach`), and the share of white noise variance the blur keeps."""
    inner = block[reach : reach + window]
    if sigma <= 0 or reach == 0:
        return inner, 1.0
    offsets = np.arange(-reach, reach + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    blurred = sum(w * block[reach + k : reach + k + window] for k, w in zip(offsets, weights, strict=True))
    return np.asarray(blurred), float(np.sum(weights**2))
