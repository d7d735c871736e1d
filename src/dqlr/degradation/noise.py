"""Camera noise (gain, read noise, offset) from one stack, by photon transfer in flat regions."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.degradation.ops import read_plane, stack_array
from dqlr.errors import DqlrError

NOISE_SLICES = 32  # slices used (evenly spread) for the noise fit
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
    centre = _centre_kernel(2.0)
    inner = ndimage.convolve(plane, centre, mode="reflect")
    mean = (ndimage.gaussian_filter(plane, 2.0) - inner) / (1.0 - centre.sum())
    smooth = ndimage.gaussian_filter(plane, 1.5)
    rough = ndimage.maximum_filter(smooth, 5) - ndimage.minimum_filter(smooth, 5)
    return res, mean, rough


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


def _noise_bins(data: Any) -> np.ndarray:
    """Rows (mean, variance, third cumulant, pixels, flat fraction) of flat pixels binned by mean."""
    n_z = data.shape[0]
    zs = np.unique(np.linspace(0, n_z - 1, min(n_z, NOISE_SLICES)).round().astype(int))
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for z in zs:
        plane = read_plane(data, z)
        # pixels touching the data's extremes may be clipped (saturated or at zero)
        lo, hi = ndimage.minimum_filter(plane, 3), ndimage.maximum_filter(plane, 3)
        ok = ((lo > plane.min()) & (hi < plane.max()))[4:-4, 4:-4].ravel() | (plane.min() == plane.max())
        for part, a in zip(parts, (plane, *_noise_features(plane)), strict=True):
            part.append(a[4:-4, 4:-4].ravel()[ok])
    value, res, mean, rough = (np.concatenate(p) for p in parts)
    threshold, var_kept, k3_kept = _flat_calibration()
    edges = np.unique(np.quantile(mean, np.linspace(0.0, 1.0, NOISE_BINS + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    order = np.argsort(which, kind="stable")
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
    data = stack_array(stack)
    rows = _noise_bins(data)
    if len(rows) < 2:
        raise DqlrError("cannot estimate the noise: too few flat regions in the stack")
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
