"""Quality measures against a clean reference (simulated stacks), slice by slice.

The result is first fitted to the reference by least squares (a*x + b): intensity scale and offset are
not what is being judged, structure and noise are.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def affine_fit(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The a*result + b closest to the reference in the least-squares sense."""
    x = np.asarray(result, np.float64).ravel()
    y = np.asarray(reference, np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], 1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return (a * np.asarray(result, np.float64) + b).reshape(np.shape(result))


def _range(reference: np.ndarray) -> float:
    return float(max(reference.max() - reference.min(), 1e-12))


def psnr_affine(result: np.ndarray, reference: np.ndarray, fit: bool = True) -> float:
    """PSNR (dB) of one slice against its reference, data range = the reference's range."""
    reference = np.asarray(reference, np.float64)
    fitted = affine_fit(result, reference) if fit else np.asarray(result, np.float64)
    return float(peak_signal_noise_ratio(reference, fitted, data_range=_range(reference)))


def ssim_affine(result: np.ndarray, reference: np.ndarray, fit: bool = True) -> float:
    """SSIM (Gaussian window, sigma 1.5) of one slice after the affine fit."""
    reference = np.asarray(reference, np.float64)
    fitted = affine_fit(result, reference) if fit else np.asarray(result, np.float64)
    return float(
        structural_similarity(
            reference, fitted, gaussian_weights=True, sigma=1.5, data_range=_range(reference)
        )
    )


def per_slice(result: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Affine-fitted PSNR and SSIM for every slice of a stack."""
    psnr = np.array([psnr_affine(r, c) for r, c in zip(result, reference, strict=True)])
    ssim = np.array([ssim_affine(r, c) for r, c in zip(result, reference, strict=True)])
    return {"psnr": psnr, "ssim": ssim}


def thirds(values: np.ndarray) -> dict[str, float]:
    """Mean over the top, middle and deepest third of the slices."""
    parts = np.array_split(np.asarray(values, np.float64), 3)
    return {name: float(part.mean()) for name, part in zip(("top", "middle", "deep"), parts, strict=True)}
