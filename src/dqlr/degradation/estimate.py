"""How each slice of a stack is degraded relative to its sharp upper slices, from the stack alone.

Deep slices of a SAM stack are blurrier, dimmer, hazier and relatively noisier than the top ones.
With no clean data and no known optics we measure each slice against the sharp upper (reference)
slices of the same stack:

- noise: a photon-transfer fit (variance and third cumulant versus mean in flat regions), which gives
  gain, read noise and camera offset; without enough flat regions (dense walls), a line fit of
  high-pass residual variance against level instead;
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

Per-slice values are then made monotone along z (isotonic regression).

Nothing here raises on a valid stack: a step that cannot be measured falls back to a default (blur
0, halo 0, attenuation 1, constant noise) and says so in `notes`; `reliable` says whether the
blur curve was measured at all (assess.py). Where the photon-transfer path works, the numbers are
exactly what they were before the fallbacks existed: shipped depth-aware models depend on them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.degradation.assess import assess_blur, blur_error
from dqlr.degradation.blur import fit_blur, power_law, radial_spectra
from dqlr.degradation.model import DEFAULT_PIXEL_UM, HALO_SIGMA_UM, MAX_HALO, DepthDegradation
from dqlr.degradation.noise import noise_model
from dqlr.degradation.ops import gaussian_fft, per_slice, read_plane, stack_array
from dqlr.errors import DqlrError
from dqlr.io import Stack
from dqlr.tissue import tissue_mask

TISSUE_SIGMA_UM = 2.0  # tissue mask smoothing, in µm (8 px at the default pixel size)
FLOOR_PERCENTILE = 5.0  # the in-tissue "floor" (cell interiors) used for the halo
HALO_DEPTHS = 16  # depths at which the halo is fitted; the others are interpolated
GRID_GAP_BINS = 6  # empty spectrum bins in a row skipped when nothing else can be measured
HALO_REFERENCES = 3  # reference slices (those with most tissue) that are degraded for the halo fit
# With blur_only, the dark level, the signal level and the tissue area of each slice (which place
# the reference slices) are read from 2 x 2 binned slices: they come from images smoothed over 2 to
# 8 pixels, which binning leaves as they are, and a quarter of the pixels makes the estimate faster
# (benchmarks/results/enhance_speed.md). On the benchmark plants the reference slices and the blur
# curves stayed identical. The whole estimate (training pairs depend on it) keeps full resolution.
COARSE_BIN = 2


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


def _binned(plane: np.ndarray, factor: int) -> np.ndarray:
    """Means of factor x factor pixels (a ragged edge left out)."""
    if factor == 1:
        return plane
    h, w = plane.shape[0] // factor, plane.shape[1] // factor
    return plane[: h * factor, : w * factor].reshape(h, factor, w, factor).mean((1, 3))


def _tissue(plane: np.ndarray, background: float, sigma: float, rim: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue mask and its inner part, away from the rim where the halo leaks out of the tissue."""
    mask = tissue_mask(plane, sigma, background)
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
        sharp.append(gaussian_fft(image, [(1.0, math.hypot(blur, 2.0))])[mask])
        wide.append(gaussian_fft(image, [(1.0, math.sqrt(blur**2 + halo_sigma**2 + 4.0))])[mask])
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


def _tissue_notes(area: np.ndarray, in_reference: bool, halo_fitted: bool) -> list[str]:
    """What could not be measured for want of tissue (mask empty or tiny)."""
    if area.max() < 0.01:
        return ["tissue: none found in any slice; attenuation 1 and halo 0 assumed"]
    if not in_reference:
        return ["tissue: none in the reference slices; attenuation 1 and halo 0 assumed"]
    if not halo_fitted:
        return ["tissue: none below the reference; halo 0 assumed"]
    return []


def estimate_degradation(
    stack: Any,
    voxel_size: tuple[float, float, float] | None = None,
    reference_fraction: float = 0.2,
    halo_sigma_px: float | None = None,
    blur_only: bool = False,
) -> DepthDegradation:
    """Estimate how each slice is degraded relative to the sharp upper slices, from the stack alone.

    The reference is the top `reference_fraction` of the slices from the first one with clear
    signal down. The halo width cannot be told apart from its share in single slices, so it is
    given: halo_sigma_px, else 4 µm at the stack's pixel size (0.25 µm pixels if unknown).
    The deepest slices, where no blur can be measured (signal buried in noise at every usable
    frequency), get a power-law extrapolation of the measured ones. Slices above the reference
    and the reference itself get no degradation (blur 0, halo 0, attenuation 1). Never raises on
    a finite 3-D stack: what could not be measured is in the result's notes. `blur_only=True`
    skips what the blur does not depend on (the halo and attenuation fits: halo 0, attenuation 1;
    the blur curve and the notes are the same; the background comes from binned slices, see
    COARSE_BIN), for callers that need only the blur curve, such as a depth-aware model's
    conditioning (under a quarter of the time, benchmarks/results/enhance_speed.md).
    """
    data = stack_array(stack)
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
    (gain, read_noise, offset), notes = noise_model(data)

    # darkest smooth level and signal level per slice
    coarse = COARSE_BIN if blur_only else 1

    def dark_and_level(z: int) -> tuple[float, float]:
        plane = _binned(read_plane(data, z), coarse)
        dark = float(np.percentile(ndimage.gaussian_filter(plane, 4.0 / coarse), 2))
        return dark, float(np.percentile(ndimage.gaussian_filter(plane, 2.0 / coarse), 99)) - dark

    dark, level = (
        np.array(values, float) for values in zip(*per_slice(dark_and_level, range(n_z)), strict=True)
    )
    has_signal = level >= 0.1 * level.max()
    flat = not has_signal.any()
    if flat:  # no slice rises above its dark level (a flat stack)
        has_signal = level == level.max()
        notes.append("signal: no slice rises above its dark level; the degradation is a default")
    dark0 = float(dark[has_signal].min())  # for tissue masks only

    # tissue area, in-tissue mean and floor (relative to dark0) per slice
    def tissue_stats(z: int) -> tuple[float, float, float]:
        if blur_only:  # the area alone places the reference
            plane = _binned(read_plane(data, z), coarse)
            return float(tissue_mask(plane, tissue_sigma / coarse, dark0).mean()), np.nan, np.nan
        mask, inner = _tissue(read_plane(data, z), dark0, tissue_sigma, halo_sigma_px)
        if mask.mean() < 0.01:
            return float(mask.mean()), np.nan, np.nan
        smooth = ndimage.gaussian_filter(read_plane(data, z), 2.0) - dark0
        return (
            float(mask.mean()),
            float(smooth[mask].mean()),
            float(np.percentile(smooth[inner], FLOOR_PERCENTILE)),
        )

    area = np.zeros(n_z)
    mean0 = np.full(n_z, np.nan)
    floor0 = np.full(n_z, np.nan)
    measured = np.flatnonzero(has_signal)
    for z, (a, m, f) in zip(measured, per_slice(tissue_stats, measured), strict=True):
        area[z], mean0[z], floor0[z] = a, m, f
    # The reference starts where the tissue is established (the apex slices show little of it,
    # mostly the bright outer wall cut flat), and covers reference_fraction of what is left.
    first = int(np.argmax(area >= 0.25 * area.max())) if area.max() > 0 else 0
    stop = min(n_z, first + max(1, round(reference_fraction * (n_z - first))))
    # Deep slices filled with tissue have no dark area left: their darkest level is the cells'
    # floor, not the background, so the background may fall below the reference's but not rise.
    background = np.minimum(dark, np.median(dark[first:stop]))
    mean = mean0 + dark0 - background
    with np.errstate(divide="ignore", invalid="ignore"):  # no signal in a slice: NaN, left out
        floor_ratio = (floor0 + dark0 - background) / mean

    # attenuation: mean signal inside the tissue, relative to the reference
    attenuation = np.ones(n_z)
    ref_ok = area[first:stop] >= 0.01  # where the in-tissue mean was measured
    if ref_ok.any() and not blur_only:
        ref_mean = np.average(mean[first:stop][ref_ok], weights=area[first:stop][ref_ok])
        weight = np.where(np.isfinite(mean), area, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # a reference without signal: NaN
            relative = mean / ref_mean
        fit = _monotone(relative, weight, stop, False)
        attenuation[stop:] = np.clip(np.nan_to_num(fit[stop:], nan=1.0), 0.0, 1.0)

    # blur: spectral slope against the reference
    freq, power, floor, counts = radial_spectra(data, gain, read_noise, offset)
    f_low = 3.0 / (2.0 * math.pi * halo_sigma_px)  # the halo no longer reaches the spectrum here
    s2, weight, s2_error = fit_blur(freq, power, floor, counts, (first, stop), f_low)
    if stop < n_z and not flat and not (weight[stop:] > 0).any():
        # nothing measured: a regular structure's spectrum is peaks with empty bins between them, and
        # a small slice's has few modes per bin, so single bins drop below the noise test
        s2, weight, s2_error = fit_blur(freq, power, floor, counts, (first, stop), f_low, GRID_GAP_BINS)
        if (weight[stop:] > 0).any():
            notes.append(
                "blur: read across gaps in the slices' spectra (a small slice or a regular structure "
                "leaves few usable frequencies)"
            )
    blur = np.zeros(n_z)
    if stop < n_z:
        fit = np.nan_to_num(_monotone(s2, weight, stop, True), nan=0.0)
        measured = np.flatnonzero(weight > 0)
        last = measured.max() if measured.size and measured.max() >= stop else stop - 1
        fit[last + 1 :] = np.maximum(fit[last], power_law(s2, weight, first, stop)[last + 1 :])
        blur[stop:] = np.sqrt(np.clip(fit[stop:], 0.0, None))

    # halo: floor of the degraded reference versus the slice's floor, at a few depths
    halo_fraction = np.zeros(n_z)
    refs: list = []
    depths: list[int] = []
    if not blur_only:
        order = sorted(range(first, stop), key=lambda z: -area[z])[:HALO_REFERENCES]
        refs = [
            (
                read_plane(data, z) - background[z],
                _tissue(read_plane(data, z), dark0, tissue_sigma, halo_sigma_px)[1],
            )
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
            halo_fraction[stop:] = np.clip(np.nan_to_num(fit[stop:], nan=0.0), 0.0, MAX_HALO)

    reliable, blur_notes = assess_blur(s2, weight, s2_error, stop)
    halo_noted = bool(refs and depths) or stop >= n_z or blur_only  # skipped on purpose: no note
    notes += _tissue_notes(area, bool(ref_ok.any()), halo_noted) + blur_notes
    if reliable and not (blur.any() or halo_fraction.any() or (attenuation < 1).any()):
        notes.append("no degradation with depth found: every slice is like the reference")
    return DepthDegradation(
        depth_index=np.arange(n_z),
        blur_sigma_px=blur,
        halo_fraction=halo_fraction,
        attenuation=attenuation,
        background=background,
        gain=float(gain),
        read_noise=float(read_noise),
        offset=float(offset),
        reference_slices=(first, stop),
        halo_sigma_px=halo_sigma_px,
        notes=notes,
        reliable=reliable,
        blur_sigma_px_error=blur_error(blur, weight, s2_error, stop),
    )
