"""Settings of the classical baselines tuned against a clean stack: benchmark harness only.

A user has no clean stack, so this lives outside the package. Always tune on a VALIDATION plant,
never on the test plant: tuning there would flatter the baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.signal import convolve
from tqdm import tqdm

from dqlr.errors import DqlrError
from dqlr.evaluation.baselines import (
    _check_iterations,
    _check_sigma,
    _data,
    _pad,
    _rl_input,
    gaussian_psf,
)
from dqlr.evaluation.metrics import psnr_affine
from dqlr.io import Stack
from dqlr.normalize import denormalize, fit_normalization, normalize

_RL_EPS = 1e-12  # the same guard against division by zero that scikit-image uses
RL_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)
RL_ITERATIONS = (5, 10, 20, 40)
SMOOTHING_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


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
