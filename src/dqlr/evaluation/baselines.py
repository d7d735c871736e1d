"""Classical baselines that DQLR is compared against: Richardson-Lucy deconvolution and smoothing.

Both work slice by slice, like the ImageJ-style comparison in the paper, on the stack normalised
once as a whole (per-slice normalisation would stretch the dim deep slices), and map the result
back to the input's dtype. The benchmarks tune their settings on a validation plant
(benchmarks/harness/tuning.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.restoration import richardson_lucy as skimage_richardson_lucy
from tqdm import tqdm

from dqlr.errors import DqlrError
from dqlr.io import Stack
from dqlr.normalize import Normalization, denormalize, fit_normalization, normalize


def gaussian_psf(sigma_px: float) -> np.ndarray:
    """Normalised 2-D Gaussian PSF, cut at 4 sigma."""
    radius = max(1, math.ceil(4.0 * sigma_px))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma_px) ** 2)
    psf = np.outer(g, g)
    return (psf / psf.sum()).astype(np.float32)


def _check_sigma(sigma_px: float, allow_zero: bool = False) -> float:
    sigma = float(sigma_px)
    if not math.isfinite(sigma) or sigma < 0 or (sigma == 0 and not allow_zero):
        op = ">=" if allow_zero else ">"
        raise DqlrError(f"sigma_px must be a finite number {op} 0, got {sigma_px!r}")
    return sigma


def _check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 1:
        raise DqlrError(f"iterations must be a whole number >= 1, got {iterations!r}")
    return int(iterations)


def _data(stack: Stack | np.ndarray | Any) -> Any:
    data = stack.data if isinstance(stack, Stack) else stack
    if len(data.shape) != 3:
        raise DqlrError(f"expected a ZYX stack, got shape {tuple(data.shape)}")
    return data


def _pad(plane: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, int]:
    """Mirror-pad by two PSF radii: RL convolves with zeros outside, which brightens the borders."""
    pad = psf.shape[0] - 1
    return np.pad(plane, pad, mode="symmetric"), pad


def _rl_input(plane: Any, norm: Normalization) -> np.ndarray:
    """Normalised slice clipped at 0: RL assumes non-negative (photon count) data."""
    return np.clip(normalize(plane, norm), 0.0, None)


def _rl_plane(plane: np.ndarray, psf: np.ndarray, iterations: int) -> np.ndarray:
    padded, pad = _pad(plane, psf)
    out = skimage_richardson_lucy(padded, psf, num_iter=iterations, clip=False)
    return out[pad:-pad, pad:-pad]


def richardson_lucy(
    stack: Stack | np.ndarray | Any,
    sigma_px: float = 2.0,
    iterations: int = 20,
    progress: bool = False,
) -> np.ndarray:
    """Richardson-Lucy deconvolution of every slice with a 2-D Gaussian PSF; keeps shape and dtype."""
    data = _data(stack)
    psf = gaussian_psf(_check_sigma(sigma_px))
    iterations = _check_iterations(iterations)
    norm = fit_normalization(data)
    out = np.empty(tuple(data.shape), dtype=np.dtype(data.dtype))
    for z in tqdm(range(out.shape[0]), desc="richardson-lucy", unit="slice", disable=not progress):
        restored = _rl_plane(_rl_input(data[z], norm), psf, iterations)
        out[z] = denormalize(restored, norm, out.dtype)
    return out


def gaussian_smoothing(
    stack: Stack | np.ndarray | Any, sigma_px: float = 1.0, progress: bool = False
) -> np.ndarray:
    """Gaussian filter of every slice: a denoising-only baseline; keeps shape and dtype."""
    data = _data(stack)
    sigma = _check_sigma(sigma_px, allow_zero=True)
    norm = fit_normalization(data)
    out = np.empty(tuple(data.shape), dtype=np.dtype(data.dtype))
    for z in tqdm(range(out.shape[0]), desc="smoothing", unit="slice", disable=not progress):
        out[z] = denormalize(ndimage.gaussian_filter(normalize(data[z], norm), sigma), norm, out.dtype)
    return out
