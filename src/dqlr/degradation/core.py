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
  found by degrading the reference slices until their floor/mean ratio matches the slice's. It
  is an effective haze: out-of-focus light from the axial blur raises the floor too, so on
  simulated stacks it reads above the true halo share, which is what makes degraded slices match.

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


def _transfer(shape: tuple[int, ...], terms: list[tuple[float, float]], half: bool = True) -> np.ndarray:
    """Transfer function of the Gaussian sum on an FFT grid (rfft2 half grid unless half=False)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = (np.fft.rfftfreq(shape[1]) if half else np.fft.fftfreq(shape[1]))[None, :]
    f2 = fy * fy + fx * fx
    return sum(w * np.exp(-2.0 * math.pi**2 * f2 * s * s) for w, s in terms)


def _kernel_energy(terms: list[tuple[float, float]]) -> float:
    """Sum of squared kernel weights: the factor by which the filter scales white-noise variance."""
    n = 2 * int(math.ceil(4.0 * max(s for _, s in terms))) + 16
    return float(np.mean(_transfer((n, n), terms, half=False) ** 2))  # Parseval


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


# --------------------------------------------------------------------------------- estimation


def _radial_spectra(
    data: Any, gain: float, read_noise: float, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Radially averaged power spectra of all slices, their noise floors and modes per bin.

    A Hann window stops the image edges from leaking power to high frequencies. The white-noise
    floor of each slice follows from the noise model and the slice itself (no plateau needed).
    Power is per pixel, so the floor equals the mean noise variance.
    """
    n_z, n_y, n_x = data.shape
    window = np.outer(np.hanning(n_y), np.hanning(n_x))
    w2 = window**2
    f = np.hypot(np.fft.fftfreq(n_y)[:, None], np.fft.fftfreq(n_x)[None, :])
    n_bins = min(n_y, n_x) // 4  # bins two frequency steps wide
    which = np.floor(f / 0.5 * n_bins).astype(int).ravel()
    inside = which < n_bins
    which = which[inside]
    counts = np.bincount(which, minlength=n_bins).astype(float)
    freq = (np.arange(n_bins) + 0.5) * 0.5 / n_bins
    power = np.zeros((n_z, n_bins))
    floor = np.zeros(n_z)
    for z in range(n_z):
        plane = _plane(data, z)
        centred = (plane - np.sum(plane * window) / window.sum()) * window
        pw = (np.abs(np.fft.fft2(centred)) ** 2).ravel()[inside] / w2.sum()
        power[z] = np.bincount(which, weights=pw, minlength=n_bins) / np.maximum(counts, 1)
        local = np.maximum(ndimage.gaussian_filter(plane, 1.0) - offset, 0.0)
        floor[z] = np.sum(w2 * (gain * local + read_noise**2)) / w2.sum()
    return freq, power, floor, counts


def _fit_blur(
    freq: np.ndarray,
    power: np.ndarray,
    floor: np.ndarray,
    counts: np.ndarray,
    ref: tuple[int, int],
    f_low: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice extra blur variance s**2 (px**2) and its weight (inverse variance, 0 if none).

    Blurring by a Gaussian of sigma s multiplies the power spectrum by exp(-4 pi**2 f**2 s**2),
    so log(signal power / reference signal power) is a line in f**2 whose slope gives s**2. The
    intercept is free (attenuation, halo and the amount of tissue only scale the spectrum above
    f_low). Only bins where both signals stand well clear of the noise floor are used.
    """
    signal = power - floor[:, None]
    first, stop = ref
    ref_signal = signal[first:stop].mean(0)
    ref_power = power[first:stop].mean(0)
    modes = counts / 4.0  # the Hann window makes neighbouring frequencies ~4-fold redundant
    ref_ok = (ref_signal > 3.0 * ref_power / np.sqrt(modes * (stop - first))) & (
        ref_signal > 0.2 * floor[first:stop].mean()
    )
    s2 = np.full(len(power), np.nan)
    weight = np.zeros(len(power))
    x = -4.0 * math.pi**2 * freq**2
    for z in range(len(power)):
        ok = ref_ok & (signal[z] > 3.0 * power[z] / np.sqrt(modes)) & (signal[z] > 0.2 * floor[z])
        # signal falls with frequency: keep the band from f_low to the first bin lost in noise,
        # so that a stray high-frequency bin (floor slightly off) cannot lever the slope
        band = freq >= f_low
        ok &= band & (np.cumsum(band & ~ok) == 0)
        if ok.sum() < 3:
            continue
        w = np.sqrt(modes[ok]) * signal[z][ok] / power[z][ok]  # 1 / sd of log(signal)
        a = np.stack([np.ones(ok.sum()), x[ok]], axis=1) * w[:, None]
        y = np.log(signal[z][ok] / ref_signal[ok]) * w
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        cov = np.linalg.inv(a.T @ a)
        s2[z] = coef[1]
        weight[z] = 1.0 / cov[1, 1]
    return s2, weight


def _power_law(s2: np.ndarray, weight: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Weighted fit s2 = c * t**p (t: depth below the reference top, 0..1) for every slice.

    Only used to extrapolate to the deepest slices, where the signal is lost in noise at every
    frequency the blur can be read from; a guess, but better than freezing the blur there.
    """
    n_z = len(s2)
    t = np.clip((np.arange(n_z) - first) / max(n_z - 1 - first, 1), 0.0, None)
    use = (weight > 0) & np.isfinite(s2) & (np.arange(n_z) >= stop)
    if use.sum() < 2:
        return np.zeros(n_z)
    best, best_err = np.zeros(n_z), math.inf
    for p in np.linspace(0.5, 4.0, 36):
        basis = t[use] ** p
        c = max(np.sum(weight[use] * s2[use] * basis) / np.sum(weight[use] * basis**2), 0.0)
        err = np.sum(weight[use] * (s2[use] - c * basis) ** 2)
        if err < best_err:
            best, best_err = c * t**p, err
    return best


def _tissue_mask(plane: np.ndarray, background: float, sigma: float) -> np.ndarray:
    """Where the heavily smoothed slice rises clearly above the background."""
    smooth = ndimage.gaussian_filter(plane, sigma)
    high = np.percentile(smooth, 99)
    if high <= background:
        return np.zeros(plane.shape, dtype=bool)
    return smooth > background + TISSUE_LEVEL * (high - background)


def _tissue(plane: np.ndarray, background: float, sigma: float, rim: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue mask and its inner part, away from the rim where the halo leaks out of the tissue."""
    mask = _tissue_mask(plane, background, sigma)
    inner = ndimage.binary_erosion(mask, iterations=max(1, int(rim)), border_value=1)
    return mask, inner if inner.mean() >= 0.01 else mask


def _floor_ratio(smooth: np.ndarray) -> float:
    """In-tissue floor over mean of a background-subtracted, lightly smoothed image (pixels)."""
    mean = smooth.mean()
    return float(np.percentile(smooth, FLOOR_PERCENTILE) / mean) if mean > 0 else math.nan


def _fit_halo(
    refs: list[tuple[np.ndarray, np.ndarray]], blur: float, halo_sigma: float, target: float
) -> float:
    """Halo share h at which the degraded reference slices show the target floor/mean ratio.

    Blur alone raises the floor (walls spread into the cells); the halo raises it further. The
    ratio grows with h, so a bisection finds h.
    """
    sharp, wide = [], []
    for image, mask in refs:
        sharp.append(_gaussian_fft(image, [(1.0, math.hypot(blur, 2.0))])[mask])
        wide.append(_gaussian_fft(image, [(1.0, math.sqrt(blur**2 + halo_sigma**2 + 4.0))])[mask])
    sharp_v, wide_v = np.concatenate(sharp), np.concatenate(wide)
    lo, hi = 0.0, MAX_HALO
    if not _floor_ratio(sharp_v) < target:
        return 0.0
    if _floor_ratio((1 - hi) * sharp_v + hi * wide_v) <= target:
        return hi
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if _floor_ratio((1 - mid) * sharp_v + mid * wide_v) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def estimate_degradation(
    stack: Any,
    voxel_size: tuple[float, float, float] | None = None,
    reference_fraction: float = 0.2,
    halo_sigma_px: float | None = None,
) -> DepthDegradation:
    """Estimate how each slice is degraded relative to the sharp upper slices, from the stack alone.

    The reference is the top `reference_fraction` of the slices from the first one with clear
    signal down. The halo width cannot be told apart from its share in single slices, so it is
    given: halo_sigma_px, else 4 µm at the stack's pixel size (0.25 µm pixels if unknown).
    The deepest slices, where no blur can be measured (signal buried in noise at every usable
    frequency), get a power-law extrapolation of the measured ones. Slices above the reference
    and the reference itself get no degradation (blur 0, halo 0, attenuation 1).
    """
    data = _data(stack)
    if voxel_size is None and isinstance(stack, Stack):
        voxel_size = stack.voxel_size
    if not 0.0 < reference_fraction < 1.0:
        raise DqlrError(f"reference_fraction must be between 0 and 1, got {reference_fraction}")
    pixel_um = float(voxel_size[2]) if voxel_size is not None else DEFAULT_PIXEL_UM
    if halo_sigma_px is None:
        halo_sigma_px = HALO_SIGMA_UM / pixel_um
    halo_sigma_px = float(halo_sigma_px)
    if not halo_sigma_px > 0:
        raise DqlrError(f"halo_sigma_px must be positive, got {halo_sigma_px}")
    tissue_sigma = TISSUE_SIGMA_UM / pixel_um
    n_z = data.shape[0]
    gain, read_noise, offset = estimate_noise(data)

    # darkest smooth level and signal level per slice
    dark = np.zeros(n_z)
    level = np.zeros(n_z)
    for z in range(n_z):
        plane = _plane(data, z)
        dark[z] = np.percentile(ndimage.gaussian_filter(plane, 4.0), 2)
        level[z] = np.percentile(ndimage.gaussian_filter(plane, 2.0), 99) - dark[z]
    has_signal = level >= 0.1 * level.max()
    dark0 = float(dark[has_signal].min())  # for tissue masks only

    # tissue area, in-tissue mean and floor (relative to dark0) per slice
    area = np.zeros(n_z)
    mean0 = np.full(n_z, np.nan)
    floor0 = np.full(n_z, np.nan)
    for z in np.flatnonzero(has_signal):
        mask, inner = _tissue(_plane(data, z), dark0, tissue_sigma, halo_sigma_px)
        area[z] = mask.mean()
        if area[z] >= 0.01:
            smooth = ndimage.gaussian_filter(_plane(data, z), 2.0) - dark0
            mean0[z] = smooth[mask].mean()
            floor0[z] = np.percentile(smooth[inner], FLOOR_PERCENTILE)
    # The reference starts where the tissue is established (the apex slices show little of it,
    # mostly the bright outer wall cut flat), and covers reference_fraction of what is left.
    first = int(np.argmax(area >= 0.25 * area.max())) if area.max() > 0 else 0
    stop = min(n_z, first + max(1, round(reference_fraction * (n_z - first))))
    # Deep slices filled with tissue have no dark area left: their darkest level is the cells'
    # floor, not the background, so the background may fall below the reference's but not rise.
    background = np.minimum(dark, np.median(dark[first:stop]))
    mean = mean0 + dark0 - background
    floor_ratio = (floor0 + dark0 - background) / mean

    # attenuation: mean signal inside the tissue, relative to the reference
    attenuation = np.ones(n_z)
    ref_ok = np.isfinite(mean[first:stop])
    if ref_ok.any():
        ref_mean = np.average(mean[first:stop][ref_ok], weights=area[first:stop][ref_ok])
        weight = np.where(np.isfinite(mean), area, 0.0)
        fit = _monotone(mean / ref_mean, weight, stop, False)
        attenuation[stop:] = np.clip(np.nan_to_num(fit[stop:], nan=1.0), 0.0, 1.0)

    # blur: spectral slope against the reference
    freq, power, floor, counts = _radial_spectra(data, gain, read_noise, offset)
    f_low = 3.0 / (2.0 * math.pi * halo_sigma_px)  # the halo no longer reaches the spectrum here
    s2, weight = _fit_blur(freq, power, floor, counts, (first, stop), f_low)
    blur = np.zeros(n_z)
    if stop < n_z:
        fit = np.nan_to_num(_monotone(s2, weight, stop, True), nan=0.0)
        measured = np.flatnonzero(weight > 0)
        last = measured.max() if measured.size and measured.max() >= stop else stop - 1
        fit[last + 1 :] = np.maximum(fit[last], _power_law(s2, weight, first, stop)[last + 1 :])
        blur[stop:] = np.sqrt(np.clip(fit[stop:], 0.0, None))

    # halo: floor of the degraded reference versus the slice's floor, at a few depths
    halo = np.zeros(n_z)
    order = sorted(range(first, stop), key=lambda z: -area[z])[:HALO_REFERENCES]
    refs = [
        (_plane(data, z) - background[z], _tissue(_plane(data, z), dark0, tissue_sigma, halo_sigma_px)[1])
        for z in order
        if np.isfinite(floor_ratio[z])
    ]
    depths = [z for z in range(stop, n_z) if np.isfinite(floor_ratio[z])]
    if refs and depths:
        picked = np.unique(np.linspace(0, len(depths) - 1, min(len(depths), HALO_DEPTHS)).round())
        zs = [depths[int(i)] for i in picked]
        fitted = [_fit_halo(refs, blur[z], halo_sigma_px, floor_ratio[z]) for z in zs]
        raw = np.interp(np.arange(n_z), zs, fitted)
        fit = _monotone(raw, np.where(np.arange(n_z) >= zs[0], 1.0, 0.0), stop, True)
        halo[stop:] = np.clip(np.nan_to_num(fit[stop:], nan=0.0), 0.0, MAX_HALO)

    return DepthDegradation(
        depth_index=np.arange(n_z),
        blur_sigma_px=blur,
        halo_fraction=halo,
        attenuation=attenuation,
        background=background,
        gain=float(gain),
        read_noise=float(read_noise),
        offset=float(offset),
        reference_slices=(first, stop),
        halo_sigma_px=halo_sigma_px,
    )


# ---------------------------------------------------------------------------------- degrading

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


def degrade(
    slices: np.ndarray, params_at_depth: dict[str, float], rng: np.random.Generator, noise: bool = True
) -> np.ndarray:
    """Make (sharp, noisy) upper slices look like a deeper slice; float32 in the input's units.

    params_at_depth comes from DepthDegradation.at(depth) or .relative(source, depth). The signal
    above the source background is blurred (Gaussian), partly spread into the halo, scaled by the
    attenuation and put on the target background. The input's own noise is blurred and scaled
    too, so only the missing variance is added: var_target(mean) minus what is left of the
    input's, never negative; as shot noise (Poisson, skewed like real data) plus Gaussian read
    noise for the part of the read noise the blur removed. Works on (Y, X) or (..., Y, X).
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
    expected = _gaussian_fft(x - p["source_background"], terms) + p["background"]
    if not noise:
        return expected.astype(np.float32)
    gain, read2, offset = max(p["gain"], 0.0), p["read_noise"] ** 2, p["offset"]
    # local means (lightly smoothed, so that noise does not decide how much noise to add)
    axes = [0.0] * (x.ndim - 2) + [1.0, 1.0]
    mean_in, mean_out = ndimage.gaussian_filter(x, axes), ndimage.gaussian_filter(expected, axes)
    kept = _kernel_energy(terms)  # share of the input's white noise variance left after the filter
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


def _tissue_centres(data: Any, degradation: DepthDegradation, first: int, stop: int) -> np.ndarray:
    """(y, x) pixels inside the tissue in the source slices, for crops that show cells.

    A fixed 8-pixel smoothing (2 µm at 0.25 µm pixels) is enough to tell tissue from background.
    """
    total = np.zeros(data.shape[1:], dtype=bool)
    for z in range(first, stop):
        total |= _tissue_mask(_plane(data, z), float(degradation.background[z]), 8.0)
    return np.argwhere(total)


def make_pairs(
    stack: Any,
    degradation: DepthDegradation,
    count: int,
    crop: int,
    window: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training pairs from the sharp upper slices: (degraded, original, target depth).

    Windows of `window` consecutive slices start in the reference range (or a little below it,
    down to a quarter of its length more); each window is degraded as a whole to one depth drawn
    uniformly from the slices below that source range, using the window's middle slice as the
    source so that a source below the reference is not degraded twice. Crops are centred on tissue
    when there is any, and degraded with a margin so the blur and halo see real neighbours.
    Returns float32 (count, window, crop, crop) twice and int64 depths (count,).
    """
    data = _data(stack)
    n_z, n_y, n_x = data.shape
    if count < 1 or window < 1 or crop < 1:
        raise DqlrError(f"count, window and crop must be at least 1, got {count}, {window}, {crop}")
    if crop > min(n_y, n_x):
        raise DqlrError(f"crop {crop} is larger than the slices ({n_y} x {n_x})")
    if len(degradation.depth_index) != n_z:
        raise DqlrError(f"the degradation has {len(degradation.depth_index)} slices, the stack {n_z}")
    first, stop = degradation.reference_slices
    stop = max(stop + max(1, (stop - first) // 4), first + window)  # the source range
    if stop >= n_z:
        raise DqlrError(f"no slices left below the source slices {first}..{stop - 1} of a {n_z}-slice stack")
    centres = _tissue_centres(data, degradation, first, stop)
    margin = int(
        math.ceil(3.0 * math.hypot(float(degradation.blur_sigma_px.max()), degradation.halo_sigma_px))
    )
    degraded = np.empty((count, window, crop, crop), dtype=np.float32)
    targets = np.empty((count, window, crop, crop), dtype=np.float32)
    depths = np.empty(count, dtype=np.int64)
    for i in range(count):
        start = int(rng.integers(first, stop - window + 1))
        depth = int(rng.integers(stop, n_z))
        if len(centres):
            cy, cx = centres[int(rng.integers(len(centres)))]
            y = int(np.clip(cy - crop // 2, 0, n_y - crop))
            x = int(np.clip(cx - crop // 2, 0, n_x - crop))
        else:
            y, x = int(rng.integers(0, n_y - crop + 1)), int(rng.integers(0, n_x - crop + 1))
        y0, x0 = max(y - margin, 0), max(x - margin, 0)
        y1, x1 = min(y + crop + margin, n_y), min(x + crop + margin, n_x)
        block = np.asarray(data[start : start + window, y0:y1, x0:x1], dtype=np.float64)
        params = degradation.relative(start + window // 2, depth)
        out = degrade(block, params, rng)
        inner = (slice(None), slice(y - y0, y - y0 + crop), slice(x - x0, x - x0 + crop))
        degraded[i] = out[inner]
        targets[i] = block[inner]
        depths[i] = depth
    return degraded, targets, depths
