"""Pictures a person would rather look at than read: slices side by side, curves by depth.

Figures are made with matplotlib's object interface (`Figure`), never pyplot: drawing a picture
must not switch the backend or open windows in a user's Jupyter or napari session.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dqlr.atomic import atomic_path
from dqlr.training.trainer import Callback

if TYPE_CHECKING:
    from dqlr.training.trainer import Trainer


def save_figure(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Lay out and write a figure as PNG atomically (temp file + rename)."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def _display_range(stack: np.ndarray) -> tuple[float, float]:
    """One display range per stack (like the normalisation): deep slices look as dim as they are."""
    sample = np.asarray(stack[:: max(1, stack.shape[0] // 16)], dtype=np.float32)
    low, high = np.percentile(sample, [0.5, 99.8])
    return float(low), float(max(high, low + 1e-6))


MAX_STRETCH = 10.0


def _slice_range(image: np.ndarray, stack_range: tuple[float, float]) -> tuple[float, float]:
    """Display range of one slice, at least 1/MAX_STRETCH of its stack's range wide."""
    low, high = (float(v) for v in np.percentile(image, [0.5, 99.8]))
    floor = (stack_range[1] - stack_range[0]) / MAX_STRETCH
    if high - low < floor:
        centre = (low + high) / 2
        low, high = centre - floor / 2, centre + floor / 2
    return low, high


def depth_indices(depth: int) -> list[int]:
    """Top, middle and deepest slice."""
    return [0, depth // 2, depth - 1]


def slice_figure(
    stacks: Mapping[str, np.ndarray],
    path: str | Path,
    slices: list[int] | None = None,
    inset: float = 0.25,
    title: str | None = None,
    per_slice_contrast: bool = False,
) -> Path:
    """A grid: one row per depth, one column per stack, each with a zoomed inset of the centre.

    With per_slice_contrast the display range is set per slice, so the structure of dim deep slices
    can be compared by eye (the intensities are then not comparable between rows). A slice is
    stretched at most MAX_STRETCH times more than its whole stack, so a near-empty slice above the
    tissue looks near-empty instead of showing its faint residue at full contrast.
    """
    names = list(stacks)
    depth = next(iter(stacks.values())).shape[0]
    slices = slices if slices is not None else depth_indices(depth)
    ranges = {name: _display_range(stack) for name, stack in stacks.items()}
    fig = Figure(figsize=(3.2 * len(names), 3.2 * len(slices)))
    axes = fig.subplots(len(slices), len(names), squeeze=False)
    for row, z in enumerate(slices):
        for col, name in enumerate(names):
            image = np.asarray(stacks[name][z], dtype=np.float32)
            low, high = ranges[name]
            if per_slice_contrast:
                low, high = _slice_range(image, ranges[name])
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:  # long method names wrap instead of running into the next column
                ax.set_title(textwrap.fill(name, 28), fontsize=10)
            if col == 0:
                ax.set_ylabel(f"slice {z + 1}/{depth}")
            h, w = image.shape
            size_y, size_x = max(int(h * inset), 8), max(int(w * inset), 8)
            y0, x0 = (h - size_y) // 2, (w - size_x) // 2
            box = ax.inset_axes([0.58, 0.58, 0.4, 0.4])
            box.imshow(
                image[y0 : y0 + size_y, x0 : x0 + size_x],
                cmap="gray",
                vmin=low,
                vmax=high,
                interpolation="nearest",
            )
            box.set_xticks([])
            box.set_yticks([])
            for spine in box.spines.values():
                spine.set_color("yellow")
            ax.add_patch(Rectangle((x0, y0), size_x, size_y, fill=False, edgecolor="yellow", lw=0.8))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def depth_plot(curves: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """One panel per measure, one line per method, depth (slice) on the x axis."""
    measures = list(next(iter(curves.values())))
    fig = Figure(figsize=(4.2 * len(measures), 3.4))
    axes = fig.subplots(1, len(measures), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for name, values in curves.items():
            ax.plot(np.arange(1, len(values[measure]) + 1), values[measure], label=name)
        ax.set_xlabel("slice (top → deep)")
        ax.set_title(measure)
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


def segmentation_figure(
    stacks: Mapping[str, np.ndarray],
    segments: Mapping[str, Mapping[int, np.ndarray]],
    labels: np.ndarray,
    path: str | Path,
) -> Path:
    """Overlays: one row per segmented slice, one column per stack; the segments' outlines (cyan) on
    the slice and the true cells they miss (IoU < 0.5) filled red, so one sees where cells are lost."""
    from skimage.segmentation import find_boundaries

    from dqlr.evaluation.segmentation import matched_cells

    names = list(stacks)
    slices = sorted(next(iter(segments.values())))
    depth = labels.shape[0]
    fig = Figure(figsize=(3.2 * len(names), 3.2 * len(slices)))
    axes = fig.subplots(len(slices), len(names), squeeze=False)
    for row, z in enumerate(slices):
        truth = np.asarray(labels[z])
        cells = np.unique(truth[truth > 0])
        for col, name in enumerate(names):
            image = np.asarray(stacks[name][z], dtype=np.float32)
            found = segments[name][z]
            hits = matched_cells(truth, found)
            missed = (truth > 0) & ~np.isin(truth, hits)
            ax = axes[row, col]
            ax.imshow(
                image,
                cmap="gray",
                vmin=float(np.percentile(image, 0.5)),
                vmax=float(np.percentile(image, 99.8)),
            )
            ax.imshow(np.ma.masked_where(~missed, missed), cmap=ListedColormap(["red"]), alpha=0.45)
            outline = find_boundaries(found, mode="inner") & (found > 0)
            ax.imshow(
                np.ma.masked_where(~outline, outline), cmap=ListedColormap(["cyan"]), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{len(hits)} of {len(cells)} cells found", fontsize=9)
            if row == 0:
                ax.set_title(textwrap.fill(name, 28), fontsize=10)
            if col == 0:
                ax.set_ylabel(f"slice {z + 1}/{depth}")
    return save_figure(fig, path, dpi=100)


def degradation_figure(degradation: Any, path: str | Path, truth: Mapping | None = None) -> Path:
    """Curves of an estimated DepthDegradation by depth (blur, halo, attenuation, background)."""
    return save_figure(degradation_plot(degradation, truth), path)


def degradation_plot(degradation: Any, truth: Mapping | None = None, columns: int = 4) -> Figure:
    """The figure of `degradation_figure`, unsaved, in `columns` columns (a GUI shows it in a dock)."""
    fields = ["blur_sigma_px", "halo_fraction", "attenuation", "background"]
    rows = -(-len(fields) // columns)
    fig = Figure(figsize=(4 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(fields) :]:
        ax.remove()
    depth = np.asarray(degradation.depth_index) + 1
    for ax, field in zip(axes, fields, strict=False):
        ax.plot(depth, np.asarray(getattr(degradation, field)), label="estimated")
        if truth is not None and field in truth:
            ax.plot(depth, np.asarray(truth[field]), "--", label="true")
            ax.legend(fontsize=8)
        ax.set_title(field)
        ax.set_xlabel("slice (top → deep)")
    fig.suptitle(
        f"noise: gain {degradation.gain:.3g}, read noise {degradation.read_noise:.3g}, "
        f"offset {degradation.offset:.3g}"
    )
    return fig


def training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Loss, validation PSNR and codebook use by epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h["val_psnr"] for h in history])
    axes[1].set_title("validation PSNR vs observed (dB)")
    if "val_perplexity" in history[0]:
        axes[2].plot(epochs, [h["val_perplexity"] for h in history], label="perplexity")
        axes[2].plot(epochs, [h["dead_codes"] for h in history], label="dead codes")
        axes[2].legend()
    axes[2].set_title("codebook usage")
    for ax in axes:
        ax.set_xlabel("epoch")
    return save_figure(fig, path)


class CurvePlotter(Callback):
    """Trainer callback: redraw curves.png in the run folder after every epoch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        training_curves(trainer.history, self.path)
