"""Pictures a person would rather look at than read: slices side by side with zoomed insets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def _display_range(stack: np.ndarray) -> tuple[float, float]:
    """One display range per stack (like the normalisation): deep slices look as dim as they are."""
    sample = np.asarray(stack[:: max(1, stack.shape[0] // 16)], dtype=np.float32)
    low, high = np.percentile(sample, [0.5, 99.8])
    return float(low), float(max(high, low + 1e-6))


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
    can be compared by eye (the intensities are then not comparable between rows).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stacks)
    depth = next(iter(stacks.values())).shape[0]
    slices = slices if slices is not None else depth_indices(depth)
    ranges = {name: _display_range(stack) for name, stack in stacks.items()}
    fig, axes = plt.subplots(
        len(slices), len(names), figsize=(3.2 * len(names), 3.2 * len(slices)), squeeze=False
    )
    for row, z in enumerate(slices):
        for col, name in enumerate(names):
            image = np.asarray(stacks[name][z], dtype=np.float32)
            low, high = ranges[name]
            if per_slice_contrast:
                low, high = np.percentile(image, [0.5, 99.8])
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
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
            ax.add_patch(plt.Rectangle((x0, y0), size_x, size_y, fill=False, edgecolor="yellow", lw=0.8))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
