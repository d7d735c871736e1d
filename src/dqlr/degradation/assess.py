"""What an estimate can be trusted for: the blur curve's uncertainty, whether it was measured at
all, and one short note for each step that fell back to a default.

The numbers of the estimate are never changed here; a depth-aware model reads `reliable` to know
whether it may be conditioned on the blur curve.
"""

from __future__ import annotations

import math

import numpy as np

MIN_MEASURED = 2  # slices below the reference with a measured blur, at least
MIN_MEASURED_SHARE = 1.0 / 3.0  # ... and at least this share of them
SHARPER_PX2 = 0.25  # mean extra blur variance below which deep slices count as sharper (px**2)


def blur_error(blur: np.ndarray, weight: np.ndarray, s2_error: np.ndarray, stop: int) -> np.ndarray:
    """Standard error of the extra blur sigma per slice (px); 0 for the reference and above.

    A measured slice: the standard error of s**2 (scaled by the fit's residuals) carried to s,
    as half the width of sqrt(s**2 -/+ error), which stays finite at s = 0. A slice whose blur
    was filled in or extrapolated: as large as its blur, and at least the largest measured error.
    """
    out = np.zeros(len(blur))
    measured = (weight > 0) & np.isfinite(s2_error)
    largest = 0.0
    for z in range(stop, len(blur)):
        s2 = float(blur[z]) ** 2
        if measured[z]:
            e = float(s2_error[z])
            out[z] = 0.5 * (math.sqrt(s2 + e) - math.sqrt(max(s2 - e, 0.0)))
            largest = max(largest, out[z])
    for z in range(stop, len(blur)):
        if not measured[z]:
            out[z] = max(float(blur[z]), largest)
    return out


def assess_blur(
    s2: np.ndarray, weight: np.ndarray, s2_error: np.ndarray, stop: int
) -> tuple[bool, list[str]]:
    """Whether the blur-by-depth curve was measured meaningfully, and notes when it was not.

    Not when nothing lies below the reference, when too few slices below it could be measured
    (signal lost in noise, or a spectrum of isolated peaks such as a regular grid), or when the
    slices below it are clearly sharper than it (the sharp end is not the top).
    """
    n_z = len(s2)
    below = n_z - stop
    if below <= 0:
        return False, ["reference: it reaches the last slice, so no degradation by depth can be measured"]
    ok = (weight[stop:] > 0) & np.isfinite(s2[stop:]) & np.isfinite(s2_error[stop:])
    measured = int(ok.sum())
    if measured == 0:
        return False, ["blur: not measurable in any slice below the reference; blur 0 assumed"]
    if measured < max(MIN_MEASURED, math.ceil(MIN_MEASURED_SHARE * below)):
        return False, [f"blur: measurable in only {measured} of {below} slices below the reference"]
    w = 1.0 / s2_error[stop:][ok] ** 2
    mean = float(np.sum(w * s2[stop:][ok]) / np.sum(w))
    if mean < -SHARPER_PX2 and mean < -3.0 / math.sqrt(float(np.sum(w))):
        return False, ["blur: slices below the reference are sharper than it (is the sharp end the bottom?)"]
    return True, []
