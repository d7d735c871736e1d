"""Classical baselines that DQLR is compared against: Richardson-Lucy deconvolution and smoothing.

Both work slice by slice, like the ImageJ-style comparison in the paper, on the stack normalised
once as a whole (per-slice normalisation would stretch the dim deep slices), and map the result
back to the input's dtype. Their settings are tuned on a validation plant, never the test plant,
so the comparison with the trained network is fair.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.signal import convolve
from skimage.restoration import richardson_lucy as skimage_richardson_lucy
from tqdm import tqdm

from dqlr.errors import DqlrError
from dqlr.io import Stack
from dqlr.metrics import psnr_affine
from dqlr.normalize import Normalization, denormalize, fit_normalization, normalize

RL_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)
RL_ITERATIONS = (5, 10, 20, 40)
SMOOTHING_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
_RL_EPS = 1e-12  # the same guard against division by zero that scikit-image uses


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


def _rl_checkpoints(plane: np.ndarray, psf: np.ndarray, iterations: list[int]) -> dict[int, np.ndarray]:
    """RL results after each requested iteration count from one run (same steps as scikit-image)."""
    padded, pad = _pad(plane, psf)
    estimate = np.full(padded.shape, 0.5, dtype=padded.dtype)
    mirror = np.flip(psf)
    out = {}
    for step in range(1, max(iterations) + 1):
        relative = padded / (convolve(estimate, psf, mode="same") + _RL_EPS)
        estimate *= convolve(relative, mirror, mode="same")
        if step in iterations:
            out[step] = estimate[pad:-pad, pad:-pad].copy()
    return out


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


def _deep_slices(observed: Any, clean: Any) -> np.ndarray:
    """Indices of the deepest third (as in metrics.thirds), after checking the pair matches."""
    observed, clean = _data(observed), _data(clean)
    if tuple(observed.shape) != tuple(clean.shape):
        raise DqlrError(
            f"observed has shape {tuple(observed.shape)} but clean has shape {tuple(clean.shape)}"
        )
    if observed.shape[0] < 3:
        raise DqlrError(f"tuning needs a stack of >= 3 slices, got shape {tuple(observed.shape)}")
    return np.array_split(np.arange(observed.shape[0]), 3)[2]


def tune_richardson_lucy(
    observed: Stack | np.ndarray | Any,
    clean: Stack | np.ndarray | Any,
    sigmas: tuple[float, ...] = RL_SIGMAS,
    iterations: tuple[int, ...] = RL_ITERATIONS,
    progress: bool = False,
) -> dict[str, Any]:
    """Grid-search sigma and iterations for the best mean affine PSNR over the deepest third.

    Pass a VALIDATION plant: tuning on the test plant would flatter the baseline. Only the deep
    slices are restored, and each (slice, sigma) runs RL once up to the largest iteration count,
    so the result for every (sigma, iterations) equals richardson_lucy(observed, sigma, iterations).
    """
    observed, clean = _data(observed), _data(clean)
    deep = _deep_slices(observed, clean)
    steps = sorted({_check_iterations(n) for n in iterations})
    sigmas = tuple(_check_sigma(s) for s in sigmas)
    if not sigmas or not steps:
        raise DqlrError("tuning needs at least one sigma and one iteration count")
    norm = fit_normalization(observed)
    dtype = np.dtype(observed.dtype)
    planes = {int(z): _rl_input(observed[z], norm) for z in deep}
    refs = {int(z): np.asarray(clean[z]) for z in deep}
    scores = {(s, n): [] for s in sigmas for n in steps}
    for sigma in tqdm(sigmas, desc="tune richardson-lucy", unit="sigma", disable=not progress):
        psf = gaussian_psf(sigma)
        for z, plane in planes.items():
            for n, restored in _rl_checkpoints(plane, psf, steps).items():
                scores[(sigma, n)].append(psnr_affine(denormalize(restored, norm, dtype), refs[z]))
    table = [{"sigma_px": s, "iterations": n, "psnr_deep": float(np.mean(v))} for (s, n), v in scores.items()]
    best = max(table, key=lambda row: row["psnr_deep"])
    return {
        **best,
        "input_psnr_deep": float(np.mean([psnr_affine(observed[z], refs[int(z)]) for z in deep])),
        "deep_slices": [int(deep[0]), int(deep[-1])],
        "table": table,
    }


def tune_gaussian_smoothing(
    observed: Stack | np.ndarray | Any,
    clean: Stack | np.ndarray | Any,
    sigmas: tuple[float, ...] = SMOOTHING_SIGMAS,
) -> dict[str, Any]:
    """Grid-search the smoothing sigma for the best mean affine PSNR over the deepest third.

    Pass a VALIDATION plant, never the test plant. Same result as gaussian_smoothing on those slices.
    """
    observed, clean = _data(observed), _data(clean)
    deep = _deep_slices(observed, clean)
    sigmas = tuple(_check_sigma(s, allow_zero=True) for s in sigmas)
    if not sigmas:
        raise DqlrError("tuning needs at least one sigma")
    norm = fit_normalization(observed)
    dtype = np.dtype(observed.dtype)
    table = []
    for sigma in sigmas:
        values = [
            psnr_affine(
                denormalize(ndimage.gaussian_filter(normalize(observed[z], norm), sigma), norm, dtype),
                clean[z],
            )
            for z in deep
        ]
        table.append({"sigma_px": sigma, "psnr_deep": float(np.mean(values))})
    best = max(table, key=lambda row: row["psnr_deep"])
    return {
        **best,
        "input_psnr_deep": float(np.mean([psnr_affine(observed[z], clean[z]) for z in deep])),
        "deep_slices": [int(deep[0]), int(deep[-1])],
        "table": table,
    }
