"""Stack access and Gaussian filtering shared by the estimate and the degrader.

Blurs are applied in Fourier space with the continuous Gaussian's transfer function, the same model
the blur estimate fits, so what `degrade` imposes is what `estimate_degradation` measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from dqlr.errors import DqlrError
from dqlr.io import Stack


def stack_array(stack: Any) -> Any:
    """The ZYX array of a Stack, or the array itself (may be lazy: read slice by slice)."""
    data = stack.data if isinstance(stack, Stack) else stack
    if len(data.shape) != 3 or data.shape[0] < 1 or min(data.shape[1:]) < 16:
        raise DqlrError(f"need a ZYX stack with slices of at least 16 x 16 pixels, got {data.shape}")
    return data


def read_plane(data: Any, z: int) -> np.ndarray:
    """Slice z as float64 (reads one slice of a lazy stack)."""
    return np.asarray(data[int(z)], dtype=np.float64)


T = TypeVar("T")
MAX_SLICE_THREADS = 4


def per_slice(work: Callable[[int], T], slices: Iterable[int]) -> list[T]:
    """work(z) for each slice, in order, on a few threads: SciPy's filters and NumPy's FFTs release
    the GIL, so on 2 cores the per-slice loops of the depth estimate run 1.9x as fast, with the same
    numbers (benchmarks/results/enhance_speed.md)."""
    slices = [int(z) for z in slices]
    threads = min(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        MAX_SLICE_THREADS,
    )
    if threads < 2 or len(slices) < 2:
        return [work(z) for z in slices]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, slices))


def blur_reach(terms: list[tuple[float, float]]) -> int:
    """Pixels beyond which the widest Gaussian of `terms` no longer reaches (3 sigma, rounded up)."""
    return int(math.ceil(3.0 * max(s for _, s in terms))) + 1


def gaussian_fft(image: np.ndarray, terms: list[tuple[float, float]], padded: bool = True) -> np.ndarray:
    """Sum of weight * Gaussian(sigma) blurs of the last two axes, as one FFT filter, in the
    image's precision (float32 stays float32).

    Reflect padding avoids wrap-around at the borders; the transfer is the continuous Gaussian's,
    the same model the blur estimate fits. `padded=False` skips the padding, for a caller that only
    keeps pixels at least blur_reach(terms) inside the image (there the wrap-around cannot reach).
    """
    from scipy import fft

    pad = min(blur_reach(terms), 4 * max(image.shape[-2:])) if padded else 0
    widths = [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)]
    grid = np.pad(image, widths, mode="reflect") if pad else image
    transfer = _transfer(grid.shape[-2:], terms).astype(grid.real.dtype, copy=False)
    out = fft.irfft2(fft.rfft2(grid) * transfer, s=grid.shape[-2:])
    return out[..., pad:-pad, pad:-pad] if pad else out


def _transfer(shape: tuple[int, ...], terms: list[tuple[float, float]], half: bool = True) -> np.ndarray:
    """Transfer function of the Gaussian sum on an FFT grid (rfft2 half grid unless half=False)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = (np.fft.rfftfreq(shape[1]) if half else np.fft.fftfreq(shape[1]))[None, :]
    f2 = fy * fy + fx * fx
    return np.asarray(sum(w * np.exp(-2.0 * math.pi**2 * f2 * s * s) for w, s in terms))


def kernel_energy(terms: list[tuple[float, float]]) -> float:
    """Sum of squared kernel weights: the factor by which the filter scales white-noise variance."""
    n = 2 * int(math.ceil(4.0 * max(s for _, s in terms))) + 16
    return float(np.mean(_transfer((n, n), terms, half=False) ** 2))  # Parseval
