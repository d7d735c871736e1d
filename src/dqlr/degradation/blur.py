"""Blur per slice from radially averaged power spectra, relative to the reference slices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from dqlr.degradation.ops import per_slice, read_plane


def radial_spectra(
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
    # A real image's spectrum is symmetric: the half grid of rfft2 (4x faster than fft2 here), its
    # columns that stand for two frequencies of the full grid counted twice, bins the same power.
    f = np.hypot(np.fft.fftfreq(n_y)[:, None], np.fft.rfftfreq(n_x)[None, :])
    twice = np.ones(f.shape[1])
    twice[1 : (n_x + 1) // 2] = 2.0
    n_bins = min(n_y, n_x) // 4  # bins two frequency steps wide
    which = np.floor(f / 0.5 * n_bins).astype(int).ravel()
    inside = which < n_bins
    which = which[inside]
    modes = np.broadcast_to(twice, f.shape).ravel()[inside]
    counts = np.bincount(which, weights=modes, minlength=n_bins)
    freq = (np.arange(n_bins) + 0.5) * 0.5 / n_bins

    def spectrum(z: int) -> tuple[np.ndarray, float]:
        plane = read_plane(data, z)
        centred = (plane - np.sum(plane * window) / window.sum()) * window
        pw = (np.abs(np.fft.rfft2(centred)) ** 2).ravel()[inside] * modes / w2.sum()
        local = np.maximum(ndimage.gaussian_filter(plane, 1.0) - offset, 0.0)
        floor = np.sum(w2 * (gain * local + read_noise**2)) / w2.sum()
        return np.bincount(which, weights=pw, minlength=n_bins) / np.maximum(counts, 1), float(floor)

    spectra = per_slice(spectrum, range(n_z))
    power = np.array([p for p, _ in spectra]).reshape(n_z, n_bins)
    floor = np.array([f for _, f in spectra], float)
    return freq, power, floor, counts


def fit_blur(
    freq: np.ndarray,
    power: np.ndarray,
    floor: np.ndarray,
    counts: np.ndarray,
    ref: tuple[int, int],
    f_low: float,
    max_gap: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice extra blur variance s**2 (px**2), its weight (inverse variance, 0 if none) and its
    standard error scaled up by the fit's residuals where they exceed the noise (NaN if none).

    Blurring by a Gaussian of sigma s multiplies the power spectrum by exp(-4 pi**2 f**2 s**2),
    so log(signal power / reference signal power) is a line in f**2 whose slope gives s**2. The
    intercept is free (attenuation, halo and the amount of tissue only scale the spectrum above
    f_low). Only bins where both signals stand well clear of the noise floor are used, from f_low
    up to where the signal is lost; `max_gap` lost bins in a row are skipped over rather than
    ending the band (a regular grid's spectrum is peaks with empty bins between them).
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
    error = np.full(len(power), np.nan)
    x = -4.0 * math.pi**2 * freq**2
    for z in range(len(power)):
        ok = ref_ok & (signal[z] > 3.0 * power[z] / np.sqrt(modes)) & (signal[z] > 0.2 * floor[z])
        # signal falls with frequency: keep the band from f_low to the first bin lost in noise,
        # so that a stray high-frequency bin (floor slightly off) cannot lever the slope
        band = freq >= f_low
        ok &= band & _before_gap(band & ~ok, max_gap)
        if ok.sum() < 3:
            continue
        w = np.sqrt(modes[ok]) * signal[z][ok] / power[z][ok]  # 1 / sd of log(signal)
        a = np.stack([np.ones(ok.sum()), x[ok]], axis=1) * w[:, None]
        y = np.log(signal[z][ok] / ref_signal[ok]) * w
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        cov = np.linalg.inv(a.T @ a)
        s2[z] = coef[1]
        weight[z] = 1.0 / cov[1, 1]
        # the weights expect unit residuals; a wall spectrum that is not Gaussian-blurred leaves more
        misfit = float(np.sum((y - a @ coef) ** 2)) / (ok.sum() - 2)
        error[z] = math.sqrt(cov[1, 1] * max(misfit, 1.0))
    return s2, weight, error


def _before_gap(lost: np.ndarray, max_gap: int) -> np.ndarray:
    """True for bins before the first run of more than `max_gap` lost bins."""
    run = np.zeros(len(lost), int)
    for i, gone in enumerate(lost):
        run[i] = run[i - 1] + 1 if gone and i > 0 else int(gone)
    over = np.flatnonzero(run > max_gap)
    keep = np.ones(len(lost), bool)
    if over.size:
        keep[over[0] - max_gap :] = False
    return keep


def power_law(s2: np.ndarray, weight: np.ndarray, first: int, stop: int) -> np.ndarray:
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
