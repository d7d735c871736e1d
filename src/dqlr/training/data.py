"""Training windows: n+1 consecutive target slices plus the slice above as context.

Windows come from random stacks, depths and positions; crops, flips and 90-degree rotations are
applied to the whole window alike, and z is never flipped (the recurrence runs top to bottom).
Stacks may be lazy (memory-mapped TIFF, Zarr): only the window is read, then normalised per stack.
A sampler may be limited to a band of columns per stack (`Columns`): a stack that both trains and
validates (adaptation) gives its training windows and its validation windows from separate bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from dqlr.io import resize
from dqlr.normalize import Normalization, normalize

Columns = tuple[int, int] | None  # [first, stop) of the x range windows are taken from; None: all


def _read_window(stack: Any, start: int, length: int, y: int, x: int, crop: int) -> np.ndarray:
    """Slices start..start+length-1 (a start of -1 repeats the top slice as a dummy context)."""
    first = max(start, 0)
    block = np.asarray(stack[first : start + length, y : y + crop, x : x + crop])
    if start < 0:
        block = np.concatenate([block[:1], block], 0)
    return block


def _pad_to_crop(block: np.ndarray, crop: int) -> np.ndarray:
    ph, pw = crop - block.shape[1], crop - block.shape[2]
    if ph > 0 or pw > 0:
        mode: Literal["reflect", "edge"] = (
            "reflect" if ph < block.shape[1] and pw < block.shape[2] else "edge"
        )
        block = np.pad(block, ((0, 0), (0, max(ph, 0)), (0, max(pw, 0))), mode=mode)
    return block


class WindowSampler:
    """Draws batches of windows (B, n+2, crop, crop) with a mask of windows that start at the top."""

    def __init__(
        self,
        stacks: Sequence[Any],
        normalizations: Sequence[Normalization],
        targets: int,
        crop: int,
        augment: bool = True,
        top_probability: float = 0.1,
        seed: int = 0,
        columns: Sequence[Columns] | None = None,
    ) -> None:
        self.stacks, self.normalizations = list(stacks), list(normalizations)
        self.columns = list(columns) if columns is not None else [None] * len(self.stacks)
        self.length = targets + 1
        self.crop, self.augment, self.top_probability = crop, augment, top_probability
        self.rng = np.random.default_rng(seed)
        for stack in self.stacks:
            if stack.shape[0] < self.length:
                raise ValueError(f"a stack has {stack.shape[0]} slices; windows need {self.length}")
        # Stacks are drawn in proportion to their number of windows, so every slice counts equally.
        counts = np.array([s.shape[0] - self.length + 2 for s in self.stacks], dtype=float)
        self.weights = counts / counts.sum()

    def window(self, index: int, start: int, y: int, x: int) -> np.ndarray:
        stack, norm = self.stacks[index], self.normalizations[index]
        block = _read_window(stack, start, self.length, y, x, self.crop)
        return normalize(_pad_to_crop(block, self.crop), norm)

    def _position(self, index: int) -> tuple[int, int, int]:
        depth, height, width = self.stacks[index].shape
        first, stop = self.columns[index] or (0, width)
        start = int(self.rng.integers(-1, depth - self.length + 1))
        y = int(self.rng.integers(0, max(height - self.crop, 0) + 1))
        x = int(self.rng.integers(first, max(stop - self.crop, first) + 1))
        return start, y, x

    def sample(self, batch: int, keep: range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` windows; with `keep`, only those of them (a DDP rank's share) are read and returned.

        The random draws are made for the whole batch either way, so every rank's generator stays
        where a single process's would be.
        """
        windows, tops = [], []
        for i in range(batch):
            index = int(self.rng.choice(len(self.stacks), p=self.weights))
            start, y, x = self._position(index)
            turns = int(self.rng.integers(4)) if self.augment else 0
            flip = self.augment and self.rng.random() < 0.5
            top = start < 0 or self.rng.random() < self.top_probability
            if keep is not None and i not in keep:
                continue
            block = self.window(index, start, y, x)
            if self.augment:
                block = np.rot90(block, turns, axes=(1, 2))
                if flip:
                    block = block[:, :, ::-1]
            windows.append(np.ascontiguousarray(block))
            tops.append(top)
        if not windows:
            return torch.zeros((0, self.length, self.crop, self.crop)), torch.zeros(0, dtype=torch.bool)
        return torch.from_numpy(np.stack(windows)), torch.tensor(tops)

    def fixed_windows(self, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A repeatable set of un-augmented windows, for validation."""
        saved, self.rng = self.rng, np.random.default_rng(seed)
        try:
            augment, self.augment = self.augment, False
            windows, tops = self.sample(count)
        finally:
            self.rng, self.augment = saved, augment
        return windows, tops

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class PairSampler:
    """Depth-aware training pairs: sharp upper windows degraded like deeper slices of their stack.

    Inputs are the degraded windows, targets the original upper windows (optionally smoothed), and
    the condition is the applied blur level, scaled so `scale_px` maps to 1. Draws from the random
    generator it is given, so a resumed run continues the same sequence.

    `zooms`: a stack the model sees resized in XY (another pixel size) is given at its own pixels,
    with its own degradation, and its zoom; its pairs are degraded there and then resized to the
    crop as enhancement resizes the slices, so the added noise has the grain of the real noise as
    the model sees it (noise added after a 2x enlargement is white at the model's pixels; the real
    noise, enlarged with the slices, is not). Their condition is the blur in the model's pixels
    (times the zoom), as enhancement measures it. `axial_px`: per stack, see make_pairs.
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        normalizations: Sequence[Normalization],
        degradations: Sequence[Any],
        length: int,
        crop: int,
        scale_px: float,
        target_smoothing_px: float = 0.0,
        augment: bool = True,
        columns: Sequence[Columns] | None = None,
        zooms: Sequence[float] | None = None,
        axial_px: Sequence[float] | None = None,
    ) -> None:
        self.stacks, self.normalizations = list(stacks), list(normalizations)
        self.degradations = list(degradations)
        self.columns = list(columns) if columns is not None else [None] * len(self.stacks)
        self.zooms = list(zooms) if zooms is not None else [1.0] * len(self.stacks)
        self.axial_px = list(axial_px) if axial_px is not None else [0.0] * len(self.stacks)
        self.length, self.crop, self.scale_px = length, crop, scale_px
        self.target_smoothing_px, self.augment = target_smoothing_px, augment
        self._centres: dict[int, np.ndarray] = {}  # per stack: tissue pixels to centre crops on

    def _source_crop(self, index: int) -> int:
        """Crop side in the stack's own pixels that becomes `crop` in the model's."""
        zoom = self.zooms[index]
        if zoom == 1.0:
            return self.crop
        first, stop = self.columns[index] or (0, int(self.stacks[index].shape[-1]))
        return max(min(round(self.crop / zoom), stop - first, int(self.stacks[index].shape[-2])), 2)

    def _tissue_centres(self, index: int) -> np.ndarray:
        from dqlr.degradation import tissue_centres

        if index not in self._centres:
            self._centres[index] = tissue_centres(self.stacks[index], self.degradations[index], self.length)
        return self._centres[index]

    def sample(self, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from scipy.ndimage import gaussian_filter

        from dqlr.degradation import make_pairs

        picks = rng.integers(0, len(self.stacks), count)
        inputs, targets, levels = [], [], []
        for index in np.unique(picks):
            k = int((picks == index).sum())
            degraded, sharp, depth = make_pairs(
                self.stacks[index],
                self.degradations[index],
                k,
                self._source_crop(int(index)),
                self.length,
                rng,
                self._tissue_centres(int(index)),
                self.columns[int(index)],
                self.axial_px[int(index)],
            )
            if self.zooms[index] != 1.0:  # to the model's pixels, as StackView resizes a slice
                shape = (*degraded.shape[:-2], self.crop, self.crop)
                shrink = self.zooms[index] < 1.0
                degraded, sharp = resize(degraded, shape, shrink), resize(sharp, shape, shrink)
            norm = self.normalizations[index]
            degraded, sharp = normalize(degraded, norm), normalize(sharp, norm)
            if self.target_smoothing_px > 0:
                sharp = gaussian_filter(sharp, (0, 0, self.target_smoothing_px, self.target_smoothing_px))
            blur = np.asarray(self.degradations[index].blur_sigma_px)[depth] * self.zooms[index]
            for j in range(k):
                pair = np.stack([degraded[j], sharp[j]])
                if self.augment:
                    pair = np.rot90(pair, int(rng.integers(4)), axes=(2, 3))
                    if rng.random() < 0.5:
                        pair = pair[..., ::-1]
                inputs.append(np.ascontiguousarray(pair[0]))
                targets.append(np.ascontiguousarray(pair[1]))
                levels.append(blur[j] / self.scale_px)
        return (
            torch.from_numpy(np.stack(inputs)).float(),
            torch.from_numpy(np.stack(targets)).float(),
            torch.tensor(levels, dtype=torch.float32),
        )
