"""Depth degradation estimated from one stack alone, and an operator that imposes it on upper slices.

Deep slices of a SAM stack are blurrier, dimmer, hazier and relatively noisier than the top ones.
With no clean data and no known optics we measure each slice against the sharp upper (reference)
slices of the same stack:

- noise: a photon-transfer fit (variance and third cumulant versus mean in flat regions), which gives
  gain, read noise and camera offset;
- blur: the slope of log(power spectrum / reference power spectrum) against f**2 above the noise
  floor, i.e. the extra Gaussian sigma that turns the reference spectrum into the slice's. The
  spectral shape is set by the thin walls, so it is robust to cell size and tissue area changing
  with depth. Axial blur cannot be separated from lateral blur in single slices (oblique walls
  just look wider), so it is folded into this effective lateral sigma;
- attenuation: mean signal above background inside the tissue, relative to the reference (blur
  and halo move light around but keep it);
- halo: the rise of the in-tissue floor (dark cell interiors) beyond what the blur explains,
  found by degrading the reference slices until their floor/mean ratio matches the slice's.

Per-slice values are then made monotone along z (isotonic regression). `degrade` applies such a
degradation to upper slices and tops up the noise so that it matches the target depth, and
`make_pairs` turns a stack into (degraded, original) training pairs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.errors import DqlrError
from dqlr.io import Stack

DEFAULT_PIXEL_UM = 0.25  # assumed lateral pixel size when the stack has no voxel size
HALO_SIGMA_UM = 4.0  # default width of the scattering halo (Gaussian sigma)
TISSUE_SIGMA_UM = 2.0  # smoothing that turns a membrane image into a tissue mask
TISSUE_LEVEL = 0.3  # tissue: smoothed signal above this fraction of its 99th percentile
FLOOR_PERCENTILE = 5.0  # the in-tissue "floor" (cell interiors) used for the halo
MAX_HALO = 0.95
NOISE_SLICES = 32  # slices used (evenly spread) for the noise fit
NOISE_BINS = 32
FLAT_QUANTILE = 0.9  # keep pixels whose local range is below this quantile of pure noise's
MIN_BIN_PIXELS = 200
HALO_DEPTHS = 16  # depths at which the halo is fitted; the others are interpolated
HALO_REFERENCES = 3  # reference slices (those with most tissue) that are degraded for the halo fit

# x minus the mean of its 8 neighbours: for white noise its variance is (1 + 1/8) times the
# pixel variance and its third cumulant (1 - 8/8**3) times the pixel's.
_NEIGHBOURS = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]) / 8.0
_RES_VAR = 1.0 + 1.0 / 8.0
_RES_K3 = 1.0 - 1.0 / 64.0


@dataclass
class DepthDegradation:
    """Per-slice degradation relative to the reference (sharpest, upper) slices of one stack.

    blur_sigma_px: extra Gaussian sigma (pixels) on top of the reference blur, lateral and axial
    blur folded together; halo_fraction: share of the signal spread into a wide Gaussian of
    sigma halo_sigma_px; attenuation: signal scale (1 for the reference); background: per-slice
    dark level (offset plus stray light) in input units; gain (input units per photon),
    read_noise and offset: the camera noise model var = gain * (mean - offset) + read_noise**2.
    reference_slices: the half-open range [first, stop) of slices used as the sharp reference.
    """

    depth_index: np.ndarray
    blur_sigma_px: np.ndarray
    halo_fraction: np.ndarray
    attenuation: np.ndarray
    background: np.ndarray
    gain: float
    read_noise: float
    offset: float
    reference_slices: tuple[int, int]
    halo_sigma_px: float = HALO_SIGMA_UM / DEFAULT_PIXEL_UM

    @property
    def reference_background(self) -> float:
        first, stop = self.reference_slices
        return float(np.median(self.background[first:stop]))

    def relative(self, source: int, target: int) -> dict[str, float]:
        """Parameters that turn slice `source` into slice `target` (for `degrade`).

        Gaussian blurs add in quadrature, attenuations divide and the halo share composes as
        1 - (1 - h_target) / (1 - h_source), so a source slightly below the reference is not
        degraded twice.
        """
        s2 = float(self.blur_sigma_px[target]) ** 2 - float(self.blur_sigma_px[source]) ** 2
        keep = (1.0 - float(self.halo_fraction[target])) / (1.0 - float(self.halo_fraction[source]))
        return {
            "blur_sigma_px": math.sqrt(max(s2, 0.0)),
            "halo_fraction": float(np.clip(1.0 - keep, 0.0, MAX_HALO)),
            "halo_sigma_px": float(self.halo_sigma_px),
            "attenuation": float(self.attenuation[target] / max(self.attenuation[source], 1e-6)),
            "background": float(self.background[target]),
            "source_background": float(self.background[source]),
            "gain": float(self.gain),
            "read_noise": float(self.read_noise),
            "offset": float(self.offset),
        }

    def at(self, depth: int) -> dict[str, float]:
        """Parameters that turn a reference slice into slice `depth` (for `degrade`)."""
        params = self.relative(self.reference_slices[0], depth)
        params["source_background"] = self.reference_background
        return params

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value.tolist()
            elif isinstance(value, tuple):
                out[f.name] = [int(v) for v in value]
            else:
                out[f.name] = float(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthDegradation:
        try:
            return cls(
                depth_index=np.asarray(d["depth_index"], dtype=np.int64),
                blur_sigma_px=np.asarray(d["blur_sigma_px"], dtype=float),
                halo_fraction=np.asarray(d["halo_fraction"], dtype=float),
                attenuation=np.asarray(d["attenuation"], dtype=float),
                background=np.asarray(d["background"], dtype=float),
                gain=float(d["gain"]),
                read_noise=float(d["read_noise"]),
                offset=float(d["offset"]),
                reference_slices=(int(d["reference_slices"][0]), int(d["reference_slices"][1])),
                halo_sigma_px=float(d.get("halo_sigma_px", HALO_SIGMA_UM / DEFAULT_PIXEL_UM)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DqlrError(f"invalid degradation record: {error}") from None


# ------------------------------------------------------------------------------------ helpers


def _data(stack: Any) -> Any:
    """The ZYX array of a Stack, or the array itself (may be lazy: read slice by slice)."""
    data = stack.data if isinstance(stack, Stack) else stack
    if len(data.shape) != 3 or data.shape[0] < 1 or min(data.shape[1:]) < 16:
        raise DqlrError(f"need a ZYX stack with slices of at least 16 x 16 pixels, got {data.shape}")
    return data


def _plane(data: Any, z: int) -> np.ndarray:
    return np.asarray(data[int(z)], dtype=np.float64)


def _gaussian_fft(image: np.ndarray, terms: list[tuple[float, float]]) -> np.ndarray:
    """Sum of weight * Gaussian(sigma) blurs of the last two axes, as one FFT filter.

    Reflect padding avoids wrap-around at the borders; the transfer is the continuous Gaussian's,
    the same model the blur estimate fits.
    """
    widest = max(s for _, s in terms)
    pad = min(int(math.ceil(3.0 * widest)) + 1, 4 * max(image.shape[-2:]))
    widths = [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)]
    padded = np.pad(image, widths, mode="reflect")
    transfer = _transfer(padded.shape[-2:], terms)
    out = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape[-2:])
    return out[..., pad:-pad, pad:-pad]


def _transfer(shape: tuple[int, ...], terms: list[tuple[float, float]]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f2 = fy * fy + fx * fx
    return sum(w * np.exp(-2.0 * math.pi**2 * f2 * s * s) for w, s in terms)


def _kernel_energy(terms: list[tuple[float, float]]) -> float:
    """Sum of squared kernel weights: the factor by which the filter scales white-noise variance."""
    widest = max(s for _, s in terms)
    n = 2 * int(math.ceil(4.0 * widest)) + 16
    transfer = _transfer((n, n), terms)
    full = np.concatenate([transfer, transfer[:, 1 : (n + 1) // 2][:, ::-1]], axis=1)  # whole grid
    return float(np.mean(np.abs(full) ** 2))


def _isotonic(y: np.ndarray, w: np.ndarray, increasing: bool = True) -> np.ndarray:
    """Weighted least-squares monotone fit (pool adjacent violators)."""
    sign = 1.0 if increasing else -1.0
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(sign * np.asarray(y, float), np.asarray(w, float), strict=True):
        values.append(yi)
        weights.append(max(wi, 1e-12))
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            wsum = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / wsum
            values[-2:] = [merged]
            weights[-2:] = [wsum]
            sizes[-2:] = [sizes[-2] + sizes[-1]]
    return sign * np.repeat(values, sizes)


def _monotone(y: np.ndarray, w: np.ndarray, start: int, increasing: bool) -> np.ndarray:
    """Isotonic fit of y[start:] where w > 0; gaps and slices without data take the last value."""
    out = np.full(len(y), np.nan)
    idx = np.flatnonzero((w > 0) & np.isfinite(y) & (np.arange(len(y)) >= start))
    if idx.size:
        out[idx] = _isotonic(y[idx], w[idx], increasing)
    last = np.nan
    for z in range(start, len(y)):
        if np.isnan(out[z]):
            out[z] = last
        last = out[z]
    return out


# -------------------------------------------------------------------------------------- noise


def _noise_features(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual (pixel minus its 8 neighbours' mean), local mean and local roughness of a plane.

    The local mean leaves out the 3 x 3 pixels the residual uses, so binning by it does not
    select (and shrink) the residual's noise. The
    roughness (range of the sigma=1.5 smoothed image over 5 x 5) is small only where the signal
    is flat, which is where the residual is pure noise.
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
        plane = _plane(data, z)
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
    data = _data(stack)
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
