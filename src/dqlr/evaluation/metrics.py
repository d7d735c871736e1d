"""Quality measures by depth: against a clean reference (simulated stacks) and without one (real).

With a reference, the result is first fitted to it by least squares (a*x + b): intensity scale and
offset are not what is being judged, structure and noise are. Without one, sharpness, membrane
contrast and noise level per slice show whether deep slices got better, as in the paper's figures.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dqlr.atomic import atomic_path, write_text
from dqlr.errors import DqlrError
from dqlr.evaluation.boundaries import BoundaryModel, load_boundary_model, segment_slice_learned
from dqlr.evaluation.segmentation import SCORES, segment_slice, segment_stack, slice_scores
from dqlr.io import check_finite, read_stack
from dqlr.tissue import tissue_mask


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
    """Mean over the top, middle and deepest third of the slices. NaN marks a slice without a value
    (a segmentation score where the slice has no true cell, e.g. above the tissue) and is left out;
    a third without any value is NaN."""
    parts = np.array_split(np.asarray(values, np.float64), 3)
    return {
        name: float(part[~np.isnan(part)].mean()) if (~np.isnan(part)).any() else float("nan")
        for name, part in zip(("top", "middle", "deep"), parts, strict=True)
    }


# ------------------------------------------------------------------------------- no reference
#
# Real stacks have no clean reference, so depth-wise quality is judged by three measures that need
# none. Each is computed on a 2-D slice and is invariant to a * slice + b (a > 0): a camera offset,
# a gain, or plain dimming with depth do not move them; only structure and noise do.

SMOOTH_SIGMA_PX = 1.0  # light pre-smoothing so pixel noise does not count as sharpness or contrast
NO_REFERENCE = ("sharpness", "contrast", "noise")
WITH_REFERENCE = ("psnr", "ssim")
WITH_LABELS = SCORES  # segmentation against true labels (dqlr.evaluation.segmentation)
THIRDS = ("top", "middle", "deep")
_TINY = 1e-12


def _smooth(image: np.ndarray, sigma: float = SMOOTH_SIGMA_PX) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(image, np.float64), sigma)


def _scale(smoothed: np.ndarray) -> float:
    """Robust intensity range (p99 - p1) of a smoothed slice: the signal that noise is set against."""
    low, high = np.percentile(smoothed, [1, 99])
    return float(max(high - low, _TINY * max(abs(high), abs(low), 1.0)))


def sharpness(image: np.ndarray) -> float:
    """Mean squared gradient of the lightly smoothed slice over its squared intensity range.

    Blur spreads each membrane over more pixels, so its gradients drop faster than its brightness.
    """
    smoothed = _smooth(image)
    gy, gx = np.gradient(smoothed)
    return float(np.mean(gy * gy + gx * gx) / _scale(smoothed) ** 2)


def membrane_contrast(image: np.ndarray) -> float:
    """Michelson contrast of membranes (p95) against the tissue median (p50), above the black level.

    Blur and scattering halo lower the membrane peaks and fill the cell interiors, so it falls.
    Black level = p1 of the whole lightly smoothed slice. Measured inside `dqlr.tissue.tissue_mask`
    (the mask the degradation estimate uses too), or over the whole slice when it finds no tissue.
    Between 0 and 1.
    """
    smoothed = _smooth(image)
    floor = np.percentile(smoothed, 1)
    inside = tissue_mask(image)
    if inside.mean() < 0.01:
        inside = np.ones(smoothed.shape, dtype=bool)
    median, bright = np.percentile(smoothed[inside], [50, 95])
    denominator = bright + median - 2 * floor
    if denominator <= _TINY * max(abs(bright), abs(floor), 1.0):
        return 0.0
    return float((bright - median) / denominator)


# Immerkaer's noise kernel: the difference of two Laplacians, blind to linear ramps; its L2 norm is 6.
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_level(image: np.ndarray) -> float:
    """Noise standard deviation over the slice's robust intensity range (p99 - p1, smoothed).

    The noise is the median absolute high-pass residual (Immerkaer kernel, MAD to sigma); the
    median ignores the few pixels on membranes where the residual is structure, not noise.
    """
    image = np.asarray(image, np.float64)
    residual = ndimage.convolve(image, _NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
    sigma = np.median(np.abs(residual)) / 0.6745 / 6.0
    return float(sigma / _scale(_smooth(image)))


def no_reference(stack: Any) -> dict[str, np.ndarray]:
    """Sharpness, contrast and noise level of every slice; reads one slice at a time."""
    out: dict[str, list[float]] = {name: [] for name in NO_REFERENCE}
    for z in range(int(stack.shape[0])):
        plane = np.asarray(stack[z], np.float64)
        out["sharpness"].append(sharpness(plane))
        out["contrast"].append(membrane_contrast(plane))
        out["noise"].append(noise_level(plane))
    return {name: np.array(values) for name, values in out.items()}


# --------------------------------------------------------------------------------- evaluation

_LABELS = {
    "psnr": "PSNR dB",
    "ssim": "SSIM",
    "sharpness": "sharpness",
    "contrast": "contrast",
    "noise": "noise",
    "cells": "cells",
    "matched": "cells found",
    "rand_error": "Rand error",
    "split": "split",
    "merged": "merged",
}
_FORMATS = {
    "psnr": ".2f",
    "ssim": ".3f",
    "sharpness": ".3g",
    "contrast": ".3f",
    "noise": ".3g",
    "cells": ".1f",
    "matched": ".3f",
    "rand_error": ".3f",
    "split": ".1f",
    "merged": ".1f",
}
LOWER_IS_BETTER = ("noise", "rand_error", "split", "merged")


def _check_shapes(shapes: dict[str, tuple[int, ...]]) -> None:
    """All stacks must be 3-D, of equal shape and deep enough to split into thirds."""
    (first, shape), *others = shapes.items()
    for name, other in others:
        if tuple(other) != tuple(shape):
            raise DqlrError(f"{first} has shape {tuple(shape)} but {name} has shape {tuple(other)}")
    if len(shape) != 3 or shape[0] < 3:
        raise DqlrError(f"{first} has shape {tuple(shape)}; evaluation needs a ZYX stack of >= 3 slices")


def _measure(
    stack: Any,
    reference: Any | None,
    name: str | None,
    labels: Any | None = None,
    segment: bool = False,
    volume: bool = False,
    segmenter: Any | None = None,
) -> dict[str, Any]:
    """Per-slice measures of one stack and their thirds; reads one slice at a time (all of them
    at once for a volume segmentation)."""
    names = _metrics(reference, labels, segment)
    values: dict[str, list[float]] = {key: [] for key in names}
    segmented = (labels is not None or segment) and volume
    in_3d = segment_stack(stack, volume=True) if segmented else None
    for z in range(int(stack.shape[0])):
        plane = np.asarray(stack[z], np.float64)
        if name is not None:
            check_finite(plane, name, z)
        if reference is not None:
            ref = np.asarray(reference[z], np.float64)
            values["psnr"].append(psnr_affine(plane, ref))
            values["ssim"].append(ssim_affine(plane, ref))
        values["sharpness"].append(sharpness(plane))
        values["contrast"].append(membrane_contrast(plane))
        values["noise"].append(noise_level(plane))
        if labels is not None or segment:
            if in_3d is not None:
                cells = in_3d[z]
            elif segmenter is not None:
                cells = segment_slice_learned(stack, z, segmenter)
            else:
                cells = segment_slice(plane)
            values["cells"].append(float(len(np.unique(cells[cells > 0]))))
        if labels is not None:
            for key, value in slice_scores(np.asarray(labels[z]), cells).items():
                values[key].append(value)
    per = {key: np.array(v) for key, v in values.items()}
    return {"per_slice": per, "thirds": {key: thirds(v) for key, v in per.items()}}


def _metrics(reference: Any | None, labels: Any | None, segment: bool = False) -> tuple[str, ...]:
    return (
        (WITH_REFERENCE if reference is not None else ())
        + NO_REFERENCE
        + (("cells",) if labels is not None or segment else ())
        + (WITH_LABELS if labels is not None else ())
    )


def _evaluate(
    result: Any,
    reference: Any,
    input: Any,
    names: dict[str, str | None],
    labels: Any | None = None,
    segment: bool = False,
    volume: bool = False,
    segmenter: Any | None = None,
) -> dict[str, Any]:
    shapes = {names["result"] or "result": tuple(result.shape)}
    if reference is not None:
        shapes[names["reference"] or "reference"] = tuple(reference.shape)
    if labels is not None:
        shapes[names.get("labels") or "labels"] = tuple(labels.shape)
    if input is not None:
        shapes[names["input"] or "input"] = tuple(input.shape)
    _check_shapes(shapes)
    if volume and labels is None and not segment:
        raise DqlrError("a volume segmentation (--volume) needs --labels or --segment")
    if segmenter is not None:
        if labels is None and not segment:
            raise DqlrError("a segmenter (--segmenter) needs --labels or --segment")
        if volume:
            raise DqlrError("the learned segmenter cuts slice by slice; drop --volume or --segmenter")
        segmenter = _as_segmenter(segmenter)
    metrics = _metrics(reference, labels, segment)
    evaluation: dict[str, Any] = {
        "n_slices": int(result.shape[0]),
        "metrics": list(metrics),
        "has_reference": reference is not None,
        "has_labels": labels is not None,
        "has_input": input is not None,
        "result": _measure(result, reference, names["result"], labels, segment, volume, segmenter),
        "segmentation": "volume" if volume else "learned" if segmenter is not None else "slices",
    }
    if input is not None:
        before = _measure(input, reference, names["input"], labels, segment, volume, segmenter)
        after = evaluation["result"]["thirds"]
        evaluation["input"] = before
        evaluation["gain"] = {
            key: {third: after[key][third] - before["thirds"][key][third] for third in THIRDS}
            for key in metrics
        }
    return evaluation


def evaluate(
    result: Any,
    reference: Any | None = None,
    input: Any | None = None,
    labels: Any | None = None,
    segment: bool = False,
    volume: bool = False,
    segmenter: BoundaryModel | str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Per-slice measures and top/middle/deep means of a result, and of its input if given.

    With a reference: affine-fitted PSNR and SSIM per slice (simulated data). Always: sharpness,
    contrast and noise level, so real stacks can be judged too. With true cell labels: a standard
    membrane segmentation of every slice scored against them (dqlr.evaluation.segmentation: share
    of cells found at IoU >= 0.5, adapted Rand error, split and merged cells); with labels or
    `segment`, the number of cells that segmentation finds per slice; with `volume` the stack is
    segmented as one volume (a 3-D seeded watershed, read whole) instead; with a `segmenter` (a
    trained wall network, dqlr.evaluation.boundaries, or its file) each slice is cut along its
    walls instead. "gain" is result minus input per third (for noise, Rand error, split and merged,
    lower is better). Stacks may be lazy; they are read one slice at a time.
    """
    names: dict[str, str | None] = {"result": None, "reference": None, "input": None, "labels": None}
    return _evaluate(result, reference, input, names, labels, segment, volume, segmenter)


def _as_segmenter(segmenter: BoundaryModel | str | os.PathLike) -> BoundaryModel:
    return segmenter if isinstance(segmenter, BoundaryModel) else load_boundary_model(Path(segmenter))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def to_json(evaluation: dict[str, Any]) -> str:
    """Strict JSON (arrays as lists of floats, inf/NaN as null) so any tool can read it."""
    return json.dumps(_jsonable(evaluation), indent=2, allow_nan=False) + "\n"


def _number(value: float, spec: str, sign: bool = False) -> str:
    if not np.isfinite(value):
        return str(value)
    return format(value, ("+" if sign else "") + spec)


def format_table(evaluation: dict[str, Any]) -> str:
    """Top/middle/deep means as a plain-text table; with an input, rows input/result/gain per third.

    Stacked rows rather than side-by-side columns keep it narrow enough for a terminal.
    """
    metrics = evaluation["metrics"]
    has_input = "input" in evaluation
    width = max(11, 1 + max(len(_LABELS[m]) for m in metrics))  # a space between every two labels
    lines = [f"{'third':<8}{'':<8}" + "".join(f"{_LABELS[m]:>{width}}" for m in metrics)]
    for third in THIRDS:
        rows = [("result", evaluation["result"]["thirds"], False)]
        if has_input:
            rows = [("input", evaluation["input"]["thirds"], False), *rows]
            gain = {m: {third: evaluation["gain"][m][third]} for m in metrics}
            rows.append(("gain", gain, True))
        for i, (label, values, sign) in enumerate(rows):
            cells = "".join(f"{_number(values[m][third], _FORMATS[m], sign):>{width}}" for m in metrics)
            lines.append(f"{third if i == 0 else '':<8}{label:<8}" + cells)
    lower = [_LABELS[m] for m in LOWER_IS_BETTER if m in metrics]
    in_3d = " (one 3-D watershed of the stack)" if evaluation.get("segmentation") == "volume" else ""
    counted = f"; cells: how many the segmentation{in_3d} finds" if "cells" in metrics else ""
    notes = f"{', '.join(lower)}: lower is better{counted}; the others: higher is better"
    if evaluation.get("has_reference"):
        notes += "; PSNR/SSIM after an affine fit to the reference"
    lines.append(notes)
    return "\n".join(lines) + "\n"


def write_csv(evaluation: dict[str, Any], path: str | os.PathLike) -> Path:
    """One row per slice: z, the result's measures, then the input's as input_<name>."""
    metrics = evaluation["metrics"]
    columns: list[tuple[str, np.ndarray]] = [
        (m, np.asarray(evaluation["result"]["per_slice"][m])) for m in metrics
    ]
    if "input" in evaluation:
        columns += [(f"input_{m}", np.asarray(evaluation["input"]["per_slice"][m])) for m in metrics]
    out = Path(path)
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["z"] + [name for name, _ in columns])
        for z in range(int(evaluation["n_slices"])):
            writer.writerow([z] + [repr(float(values[z])) for _, values in columns])
    return out


def evaluate_files(
    result_path: str | os.PathLike,
    reference_path: str | os.PathLike | None = None,
    input_path: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    labels_path: str | os.PathLike | None = None,
    segment: bool = False,
    volume: bool = False,
    segmenter_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """`evaluate` on stacks read from files (lazily, slice by slice); optionally writes JSON and CSV."""
    result = read_stack(result_path, lazy=True)
    reference = read_stack(reference_path, lazy=True) if reference_path is not None else None
    input = read_stack(input_path, lazy=True) if input_path is not None else None
    labels = read_stack(labels_path, lazy=True) if labels_path is not None else None
    names = {
        "result": str(result_path),
        "reference": None if reference_path is None else str(reference_path),
        "input": None if input_path is None else str(input_path),
        "labels": None if labels_path is None else str(labels_path),
    }
    evaluation = _evaluate(
        result.data,
        None if reference is None else reference.data,
        None if input is None else input.data,
        names,
        None if labels is None else labels.data,
        segment,
        volume,
        segmenter_path,
    )
    evaluation["files"] = names
    if json_path is not None:
        write_text(json_path, to_json(evaluation))
    if csv_path is not None:
        write_csv(evaluation, csv_path)
    return evaluation
