"""What differs between a user's stack and what a model assumes, found before any model work.

A model expects the sharp slices at the top, quality falling with depth, and the pixel size it
was trained on. `assess` measures these on the stack itself and returns plain findings: the
orientation to use, the lateral zoom to the model's pixel size, and one-line notes for the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SharpEnd = Literal["auto", "top", "bottom"]
CLEAR_TREND = math.log(1.5)  # below a 1.5x change over the stack, quality does not fall with depth
# Turning a stack over on a wrong guess does more harm than leaving it: only a clear rise of
# sharpness with depth (4x; simulated and real top-down stacks fall 100x or more, while the near-empty
# cap slices of a short top-down stack can make it rise up to ~2x) counts as "the bottom is sharp".
FLIP_TREND = math.log(4.0)
# A focus inside the stack: both ends 5x less sharp than it. Simulated stacks focused inside measured
# 8-15x; the near-empty cap slices at the top of plain top-down stacks of 96 px slices up to 3.3x.
INSIDE_DROP = math.log(5.0)
PIXEL_TOLERANCE = 0.2  # relative pixel-size difference tolerated without resampling
SATURATED_SHARE = 0.005  # pixels at the dtype's largest value above which clipping is named
NOISE_BAND = 0.42  # cycles per pixel above which a slice holds noise only
MAX_SIDE = 512  # the profile is measured on a central crop: statistics are the same across a slice


@dataclass
class Findings:
    """How to present the stack to the model, and what the user should know."""

    flip: bool = False
    focus: int | None = None  # sharpest slice inside the stack: enhance from it up and down
    zoom: float = 1.0  # lateral scale factor applied before the model (1: none)
    notes: list[str] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)  # per slice, as measured


def _band_sharpness(plane: np.ndarray, zoom: float = 1.0) -> tuple[float, float]:
    """Mid-band over low-band power of a slice, above the white-noise floor; and the signal power.

    Blur removes mid frequencies first, so this ratio falls as a slice gets blurrier; subtracting
    the power at the highest frequencies (noise only) keeps dim noisy slices from looking sharp.
    The bands are in cycles per pixel of the model (a slice pixel is 1/zoom of them); the noise band
    stays in the slice's own pixels, where noise is white.
    """
    p = np.asarray(plane, np.float64)
    p = p - p.mean()
    power = np.abs(np.fft.rfft2(p)) ** 2
    fy = np.fft.fftfreq(p.shape[0])[:, None]
    fx = np.fft.rfftfreq(p.shape[1])[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    noise = float(power[f >= NOISE_BAND].mean())
    scaled = f / zoom
    low_band = (scaled > 0.01) & (scaled < 0.06)
    mid_band = (scaled >= 0.12) & (scaled < 0.25) & (f < NOISE_BAND)
    if not low_band.any() or not mid_band.any():  # pixels too coarse (or slice too small): own bands
        low_band, mid_band = (f > 0.01) & (f < 0.06), (f >= 0.12) & (f < 0.25)
    if not low_band.any():
        return 0.0, 0.0
    low = float(power[low_band].mean()) - noise
    mid = float(power[mid_band].mean()) - noise
    return max(mid, 0.0) / max(low, 1e-12), low


def sharpness_profile(stack: Any, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice band sharpness and signal power, on a central crop of at most MAX_SIDE pixels of
    the model (bands and crop scaled by `zoom`, the model's pixels per slice pixel)."""
    depth, height, width = (int(n) for n in stack.shape)
    side = min(max(round(MAX_SIDE / zoom), 16), 2 * MAX_SIDE)  # bounded work on very fine pixels
    y0, x0 = max((height - side) // 2, 0), max((width - side) // 2, 0)
    values = [
        _band_sharpness(np.asarray(stack[z, y0 : y0 + side, x0 : x0 + side]), zoom) for z in range(depth)
    ]
    return np.array([v[0] for v in values]), np.array([v[1] for v in values])


def depth_trend(sharpness: np.ndarray, signal: np.ndarray) -> float | None:
    """Log change of sharpness from top to bottom (negative: falls with depth), fitted over the
    slices that hold signal; None when too few slices do."""
    used = (
        (signal >= 0.1 * signal.max()) & (sharpness > 0) if signal.max() > 0 else np.zeros_like(signal, bool)
    )
    if used.sum() < 3:
        return None
    z = np.flatnonzero(used) / max(len(sharpness) - 1, 1)
    slope = np.polyfit(z, np.log(sharpness[used]), 1)[0]
    return float(slope)


def sharpest_inside(sharpness: np.ndarray, signal: np.ndarray) -> int | None:
    """The slice where a stack is sharpest when that lies well inside it, with both ends clearly
    (INSIDE_DROP) blurrier; None when the sharp part is at an end (or nothing can be said)."""
    if not signal.max() > 0:
        return None
    used = np.flatnonzero((signal >= 0.1 * signal.max()) & (sharpness > 0))
    if len(used) < 9:
        return None
    log = np.log(sharpness[used])
    smooth = np.convolve(np.pad(log, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    peak = int(np.argmax(smooth))
    edge = max(len(used) // 5, 2)
    if not edge <= peak < len(used) - edge:
        return None
    top, bottom = smooth[:edge].mean(), smooth[-edge:].mean()
    if smooth[peak] - max(top, bottom) < INSIDE_DROP:
        return None
    return int(used[peak])


def intensity_notes(stack: Any) -> list[str]:
    """A note on intensities no model can restore: pixels clipped at the largest value of the dtype.

    Measured on a central crop of up to 9 slices spread over the stack (a full read would cost a
    pass over a large file for two numbers)."""
    depth, height, width = (int(n) for n in stack.shape)
    y0, x0 = max((height - MAX_SIDE) // 2, 0), max((width - MAX_SIDE) // 2, 0)
    chosen = np.unique(np.linspace(0, depth - 1, min(depth, 9)).round().astype(int))
    sample = np.stack([np.asarray(stack[int(z), y0 : y0 + MAX_SIDE, x0 : x0 + MAX_SIDE]) for z in chosen])
    notes = []
    if sample.dtype.kind in "ui":
        top = np.iinfo(sample.dtype).max
        clipped = float(np.mean(sample == top))
        if clipped > SATURATED_SHARE:
            notes.append(
                f"{100 * clipped:.1f}% of the pixels are at the largest value of {sample.dtype} (saturated): "
                "structure there was lost when imaging and cannot be restored"
            )
    return notes


def assess(
    stack: Any,
    sharp_end: SharpEnd = "auto",
    voxel_size: tuple[float, float, float] | None = None,
    model_voxel_size: tuple[float, float, float] | None = None,
    match_pixel_size: bool = True,
) -> Findings:
    """Measure the stack against the model's assumptions; never raises on a valid stack."""
    findings = Findings()
    findings.notes += intensity_notes(stack)
    findings.zoom = _zoom(voxel_size, model_voxel_size, match_pixel_size, findings.notes)
    # Bands in the model's pixels: they then mean the same structures in µm at any pixel size (at
    # 0.1 µm pixels the raw bands see mostly noise and made a top-down stack look bottom-sharp).
    known = voxel_size is not None and model_voxel_size is not None
    scale = float(voxel_size[2]) / float(model_voxel_size[2]) if known else 1.0  # type: ignore[index]
    sharpness, signal = sharpness_profile(stack, scale)
    findings.sharpness = sharpness.tolist()
    trend = depth_trend(sharpness, signal)
    inside = sharpest_inside(sharpness, signal)
    if inside is not None and sharp_end == "auto":
        findings.focus = inside
        findings.notes.append(
            f"the sharpest slices are inside this stack (near z={inside}), not at an end; the part "
            f"from z={inside} down and the part from z={inside} up (turned over) are each enhanced from "
            "their sharp end (--sharp-end top|bottom to treat the stack as one)"
        )
        return findings
    if trend is None or abs(trend) < CLEAR_TREND:
        findings.notes.append(
            "quality does not clearly fall with depth in this stack; there is little depth "
            "degradation to undo here (compare the result with plain smoothing)"
        )
    detected_bottom = trend is not None and trend > FLIP_TREND
    if sharp_end == "bottom" or (sharp_end == "auto" and detected_bottom):
        findings.flip = True
        if sharp_end == "auto":
            findings.notes.append(
                "the sharp end of this stack is the bottom; it is enhanced upside down and written "
                "back in its own order (--sharp-end top|bottom to choose)"
            )
    elif sharp_end == "top" and detected_bottom:
        findings.notes.append(
            "the bottom of this stack looks sharper than the top, but --sharp-end top was given"
        )
    return findings


def _zoom(
    voxel_size: tuple[float, float, float] | None,
    model_voxel_size: tuple[float, float, float] | None,
    match: bool,
    notes: list[str],
) -> float:
    """Lateral factor that brings the stack to the model's pixel size (1.0: leave it)."""
    if model_voxel_size is None:
        return 1.0
    model_px = float(model_voxel_size[2])
    if voxel_size is None:
        notes.append(f"the stack has no voxel size; assuming the model's {model_px:g} µm pixels")
        return 1.0
    pixel = float(voxel_size[2])
    if abs(pixel - model_px) <= PIXEL_TOLERANCE * model_px:
        return 1.0
    if not match:
        notes.append(
            f"pixels are {pixel:g} µm, the model was trained on {model_px:g} µm; not resampled "
            "(resampling was turned off)"
        )
        return 1.0
    notes.append(
        f"pixels are {pixel:g} µm, the model was trained on {model_px:g} µm; slices are resampled to "
        f"{model_px:g} µm for the model and back"
    )
    return pixel / model_px
