"""The one tissue mask of dqlr: where a heavily smoothed slice rises clearly above the dark level.

Smoothed over about a cell, membranes merge into a glow that covers the tissue and leaves the dark
surroundings out. The degradation estimate measures signal inside this mask and centres training
crops on it; the no-reference metrics judge membrane contrast inside it. One definition keeps
"inside the tissue" the same for both.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dqlr.errors import DqlrError

TISSUE_SIGMA_PX = 8.0  # smoothing (2 µm at 0.25 µm pixels) that merges membranes into one glow
TISSUE_LEVEL = 0.3  # tissue: above this share of the way from the dark level to the 99th percentile


def tissue_mask(
    plane: np.ndarray, sigma: float = TISSUE_SIGMA_PX, background: float | None = None
) -> np.ndarray:
    """Pixels where the slice smoothed by `sigma` rises above background + 0.3 * (p99 - background).

    The threshold is relative to the slice's own bright glow, so a gain or an offset does not move
    it. `background` is the dark level (the degradation estimate knows it per stack); by default
    the 1st percentile of the smoothed slice. Empty when nothing rises above the background.
    """
    image = np.asarray(plane, dtype=np.float64)
    if image.ndim != 2:
        raise DqlrError(f"a tissue mask needs a (Y, X) slice, got shape {image.shape}")
    if not sigma > 0:
        raise DqlrError(f"the tissue mask smoothing must be positive, got {sigma}")
    smooth = ndimage.gaussian_filter(image, sigma)
    high = np.percentile(smooth, 99)
    if background is None:
        background = float(np.percentile(smooth, 1))
    if high <= background:
        return np.zeros(image.shape, dtype=bool)
    return smooth > background + TISSUE_LEVEL * (high - background)
