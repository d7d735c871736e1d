"""Camera noise (gain, read noise, offset) from one stack, by photon transfer in flat regions.

`estimate_noise` raises when the stack has too few flat regions (dense walls everywhere);
`noise_model` then falls back to a fit that needs none (high-pass residuals against level).
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.degradation.ops import per_slice, read_plane, stack_array
from dqlr.errors import DqlrError

NOISE_SLICES = 32  # at most this many slices (evenly spread) for the noise fit
# ... and no more of them than these pixels need: on the 40 x 512 x 512 stack of
# benchmarks/enhance_speed.py, 8 slices gave the gain of 32 within 0.1 % and a blur curve within
# 0.002 px (checked by hand) in a quarter of the time. Slices up to 256 x 256 still use 32 slices.
NOISE_PIXELS = 2**21
NOISE_BINS = 32
FLAT_QUANTILE = 0.9  # keep pixels whose local range is below this quantile of pure noise's
MIN_BIN_PIXELS = 200

# x minus the mean of its 8 neighbours: for white noise its variance is (1 + 1/8) times the
# pixel variance and its third cumulant (1 - 8/8**3) times the pixel's.
_NEIGHBOURS = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]) / 8.0
_RES_VAR = 1.0 + 1.0 / 8.0
_RES_K3 = 1.0 - 1.0 / 64.0


def _noise_features(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual (pixel minus its 8 neighbours' mean), local mean and local roughness of a plane.

    The local mean leaves out the 3 x 3 pixels the residual uses, so binning by it does not
    select (and shrink) the residual's noise. The roughness (range of the sigma=1.5 smoothed
    image over 5 x 5) is small only where the signal is flat, where the residual is pure noise.
    """
    res = plane - ndimage.convolve(plane, _NEIGHBOURS, mode="reflect")
    mean = _local_mean(plane)
    smooth = ndimage.gaussian_filter(plane, 1.5)
    rough = ndimage.maximum_filter(smooth, 5) - ndimage.minimum_filter(smooth, 5)
    return res, mean, rough


def _local_mean(plane: np.ndarray) -> np.ndarray:
    """Gaussian (sigma 2) local mean that leaves out the 3 x 3 pixels around each pixel."""
    centre = _centre_kernel(2.0)
    inner = ndimage.convolve(plane, centre, mode="reflect")
    return (ndimage.gaussian_filter(plane, 2.0) - inner) / (1.0 - centre.sum())


@functools.cache
def _centre_kernel(sigma: float) -> np.ndarray:
    """The 3 x 3 centre of a Gaussian filter's kernel (to leave the residual's pixels out)."""
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return ndimage.gaussian_filter(delta, sigma)[15:18, 15:18].copy()


@functools.cache
def _flat_calibration() -> tuple[float, float, float]:
    """Roughness threshold (in noise sigmas) and the variance and third cumulant it keeps.

    Measured once on skewed unit-variance noise (gamma, skewness 0.5, like shot noise), so the
    selection of flat pixels can be undone exactly: kept pixels have slightly smaller residuals.
    """
    noise = (np.random.default_rng(0).gamma(16.0, 1.0, (512, 512)) - 16.0) / 4.0
    res, _, rough = (a[8:-8, 8:-8].ravel() for a in _noise_features(noise))
    threshold = float(np.quantile(rough, FLAT_QUANTILE))
    kept = res[rough <= threshold] - res.mean()
    res = res - res.mean()
    var_kept = float(np.mean(kept**2) / np.mean(res**2))
    k3_kept = float(np.mean(kept**3) / np.mean(res**3))
    return threshold, var_kept, k3_kept


def _noise_slices(shape: tuple[int, ...]) -> np.ndarray:
    """Indices of the slices sampled for the noise fit (see NOISE_PIXELS), evenly spread."""
    n_z, plane = shape[0], int(np.prod(shape[1:]))
    count = min(n_z, NOISE_SLICES, max(4, math.ceil(NOISE_PIXELS / max(plane, 1))))
    return np.unique(np.linspace(0, n_z - 1, count).round().astype(int))


def _unclipped(plane: np.ndarray) -> np.ndarray:
    """Inner pixels (4 from the edge, raveled) not touching the data's extremes (may be clipped)."""
    # a pixel touches an extreme where one lies within its 3 x 3: a filter of 1-byte flags, 4x
    # faster than the minimum and maximum filters of the plane that it equals
    extreme = ((plane == plane.min()) | (plane == plane.max())).view(np.uint8)
    touching = ndimage.maximum_filter(extreme, 3)[4:-4, 4:-4].ravel() > 0
    return ~touching | (plane.min() == plane.max())


def _noise_bins(data: Any) -> np.ndarray:
    """Rows (mean, variance, third cumulant, pixels, flat fraction) of flat pixels binned by mean."""

    def features(z: int) -> list[np.ndarray]:
        plane = read_plane(data, z)
        ok = _unclipped(plane)
        return [a[4:-4, 4:-4].ravel()[ok] for a in (plane, *_noise_features(plane))]

    value, res, mean, rough = (
        np.concatenate(part) for part in zip(*per_slice(features, _noise_slices(data.shape)), strict=True)
    )
    if not value.size:  # every pixel touches the data's extremes (e.g. binary data)
        return np.zeros((0, 5))
    threshold, var_kept, k3_kept = _flat_calibration()
    edges = np.unique(np.quantile(mean, np.linspace(0.0, 1.0, NOISE_BINS + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    order = np.argsort(which.astype(np.int16), kind="stable")  # small ints: a radix sort, 4x faster
    bounds = np.searchsorted(which[order], np.arange(len(edges)))
    rows = []
    for b in range(len(edges) - 1):
        sel = order[bounds[b] : bounds[b + 1]]
        # bins are drawn by the (noisy) local mean but a bin's level is the mean of its pixels
        # themselves: their own noise does not take part in the selection, so this is unbiased
        r, m, q = res[sel], value[sel], rough[sel]
        if r.size < MIN_BIN_PIXELS:
            continue
        sd = 1.4826 * np.median(np.abs(r - np.median(r))) / math.sqrt(_RES_VAR)
        for _ in range(3):  # flat = roughness below what pure noise of this level shows
            keep = q <= threshold * sd
            if keep.sum() < MIN_BIN_PIXELS:
                break
            sd = math.sqrt(np.var(r[keep]) / (_RES_VAR * var_kept))
        if keep.sum() < MIN_BIN_PIXELS or sd <= 0:
            continue
        rk = r[keep] - r[keep].mean()
        var = float(np.mean(rk**2) / (_RES_VAR * var_kept))
        k3 = float(np.mean(rk**3) / (_RES_K3 * k3_kept))
        rows.append((float(m[keep].mean()), var, k3, float(keep.sum()), float(keep.mean())))
    return np.array(rows).reshape(-1, 5)


def estimate_noise(stack: Any) -> tuple[float, float, float]:
    """Gain (input units per photon), read noise sigma and camera offset of a stack.

    Method (photon transfer on one stack): in up to 32 slices, the residual of each pixel against
    the mean of its 8 neighbours is pure noise wherever the signal is flat (smoothed image barely
    varies nearby; threshold calibrated on simulated noise). Those residuals are binned by local
    mean; per bin the noise variance and third cumulant are measured. For Poisson photons times
    gain plus Gaussian read noise, var = gain * (mean - offset) + read**2 (a weighted line fit
    gives gain) and the third cumulant is gain**2 * (mean - offset), which pins the offset that the
    variance line alone cannot separate from the read noise. Then read**2 = intercept + gain *
    offset. Assumes independent pixels and no excess (e.g. PMT gain) noise.
    """
    found = _photon_transfer(_noise_bins(stack_array(stack)))
    if found is None:
        raise DqlrError("cannot estimate the noise: too few flat regions in the stack")
    return found


def _photon_transfer(rows: np.ndarray) -> tuple[float, float, float] | None:
    """Gain, read noise and offset from the flat-region bins; None with fewer than two bins."""
    if len(rows) < 2:
        return None
    mean, var, k3, n, flat = rows.T
    w = np.sqrt(n) / var  # inverse standard error of a variance estimate
    gain, intercept = np.polyfit(mean, var, 1, w=w)
    if gain <= 0:  # no measurable shot noise: Gaussian noise only
        sd = math.sqrt(float(np.average(var, weights=n)))
        return 0.0, sd, float(np.min(mean))
    # offset from the third cumulant, in bins that are mostly flat (least structure left)
    good = flat >= 0.5 if np.any(flat >= 0.5) else flat >= np.sort(flat)[-min(3, len(flat))]
    offsets = mean[good] - k3[good] / gain**2
    weights = n[good] / var[good] ** 3  # inverse variance of a third-cumulant estimate
    order = np.argsort(offsets)
    cum = np.cumsum(weights[order])
    offset = float(offsets[order][np.searchsorted(cum, 0.5 * cum[-1])])  # weighted median
    read2 = intercept + gain * offset
    if read2 <= 0:  # offset above what the variance line allows: no read noise left
        read2 = 0.0
    return float(gain), math.sqrt(read2), offset


# Second differences along y times along x (Immerkaer's kernel): cancels every image of the form
# f(y) + g(x), so planes and walls along the axes (blurred or not); white noise comes out with 36
# times the pixel variance. Each pixel's variance enters the output with weight kernel**2 / 36.
_HIGH_PASS = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
_HIGH_PASS_GAIN = 36.0
ROBUST_BINS = 16
ROBUST_MIN_PIXELS = 50
KEEP = 0.98  # share of the smallest squared residuals kept (the rest may be structure)
_CUT = NormalDist().inv_cdf(0.5 + KEEP / 2)
_KEPT_VAR = 1.0 - 2.0 * _CUT * NormalDist().pdf(_CUT) / KEEP  # mean square kept, unit normal


def _robust_bins(data: Any) -> tuple[np.ndarray, float]:
    """Rows (level, variance, pixels): trimmed mean square of high-pass residuals, binned by level;
    and the darkest level (1st percentile), where the noise model must still hold.

    Needs no flat regions. A trimmed mean square, not a median, because a bin mixes pixels of
    different levels (walls and cell interiors share a local mean) and only a mean averages
    their variances right; the trim drops the few residuals that structure (wall crossings)
    leaves. Bins are drawn by a local mean that leaves the residual's pixels out; a bin's level
    is the mean that its residuals' variance follows (same weights), so neither is biased.
    """
    parts: list[list[np.ndarray]] = [[], [], []]
    for z in _noise_slices(data.shape):
        plane = read_plane(data, z)
        ok = _unclipped(plane)
        if ok.sum() < ROBUST_MIN_PIXELS:  # nearly all pixels at the extremes: binary-like data
            ok = np.ones_like(ok)
        res = ndimage.convolve(plane, _HIGH_PASS, mode="reflect")
        level = ndimage.convolve(plane, _HIGH_PASS**2 / _HIGH_PASS_GAIN, mode="reflect")
        for part, a in zip(parts, (res, level, _local_mean(plane)), strict=True):
            part.append(a[4:-4, 4:-4].ravel()[ok])
    res, level, mean = (np.concatenate(p) for p in parts)
    edges = np.unique(np.quantile(mean, np.linspace(0.0, 1.0, ROBUST_BINS + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    for b in range(max(len(edges) - 1, 1)):
        r = res[which == b]
        if r.size < ROBUST_MIN_PIXELS:
            continue
        kept = np.partition((r - np.median(r)) ** 2, int(KEEP * r.size) - 1)[: int(KEEP * r.size)]
        var = float(kept.mean()) / (_KEPT_VAR * _HIGH_PASS_GAIN)
        if var > 0:
            rows.append((float(level[which == b].mean()), var, float(r.size)))
    return np.array(rows).reshape(-1, 3), float(np.percentile(level, 1.0))


def _line_without_outliers(level: np.ndarray, var: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Weighted line var = gain * level + intercept, leaving out bins far above it (structure)."""
    keep = np.ones(len(level), dtype=bool)
    for _ in range(5):
        gain, intercept = np.polyfit(level[keep], var[keep], 1, w=np.sqrt(n[keep]) / var[keep])
        excess = var / np.maximum(gain * level + intercept, 1e-12 * var.max()) - 1.0
        spread = 1.4826 * float(np.median(np.abs(excess[keep])))
        new = excess <= max(3.0 * spread, 0.05)
        if new.sum() < 2 or np.array_equal(new, keep):
            break
        keep = new
    return float(gain), float(intercept)


def _robust_noise(data: Any) -> tuple[tuple[float, float, float], str]:
    """Gain, read noise and offset from a line fit of robust variance against level, and a note.

    The line gives the gain and the variance at any level; the offset cannot be told apart from
    the read noise without flat regions, so it is put at the darkest level of the data (or where
    the line reaches zero variance, if that is higher): the model is the fitted line down there.
    """
    rows, dark = _robust_bins(data)
    level, var, n = rows.T
    if len(level) >= 2:
        gain, intercept = _line_without_outliers(level, var, n)
        if gain > 0:
            offset = max(dark, -intercept / gain)
            read2 = max(intercept + gain * offset, 0.0)
            note = "too few flat regions; gain and read noise fitted to high-pass residuals instead"
            return (gain, math.sqrt(read2), offset), note
    if len(level):
        note = "too few flat regions and no shot noise in high-pass residuals; constant noise assumed"
        return (0.0, math.sqrt(float(np.average(var, weights=n))), dark), note
    # no bin with any spread: a (nearly) constant stack
    plane = read_plane(data, 0)
    note = "too few flat regions and no noise found; constant noise assumed"
    sd = float(np.std(ndimage.convolve(plane, _HIGH_PASS, mode="reflect"))) / 6.0
    return (0.0, sd, float(plane.min())), note


def noise_model(stack: Any) -> tuple[tuple[float, float, float], list[str]]:
    """Gain, read noise and offset by photon transfer, else from high-pass residuals; and notes.

    Never raises on a valid stack; the note says when (and why) the fallback was used.
    """
    data = stack_array(stack)
    found = _photon_transfer(_noise_bins(data))
    if found is not None:
        return found, []
    camera, note = _robust_noise(data)
    return camera, [f"noise: {note}"]
