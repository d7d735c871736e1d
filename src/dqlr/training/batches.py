"""Training and validation batches: windows of the stacks and, in depth-aware mode, degraded pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dqlr.config import Config
from dqlr.degradation import DepthDegradation, estimate_degradation
from dqlr.normalize import Normalization
from dqlr.training.data import Columns, PairSampler, WindowSampler


@dataclass
class Batch:
    """Network inputs (B, T, H, W), loss targets (B, T-1, H, W), top flags and condition levels."""

    inputs: torch.Tensor
    targets: torch.Tensor
    tops: torch.Tensor
    condition: torch.Tensor | None

    def join(self, other: Batch) -> Batch:
        def levels(b: Batch) -> torch.Tensor:
            return b.condition if b.condition is not None else torch.zeros(b.inputs.shape[0])

        return Batch(
            torch.cat([self.inputs, other.inputs]),
            torch.cat([self.targets, other.targets]),
            torch.cat([self.tops, other.tops]),
            torch.cat([levels(self), levels(other)]),
        )

    def to(self, device: torch.device) -> Batch:
        condition = None if self.condition is None else self.condition.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), self.tops.to(device), condition)

    def part(self, start: int, stop: int) -> Batch:
        condition = None if self.condition is None else self.condition[start:stop]
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.tops[start:stop], condition)


def window_batch(windows: torch.Tensor, tops: torch.Tensor) -> Batch:
    """Self-supervised windows: slice 0 is the context, every later slice its own target."""
    return Batch(windows, windows[:, 1:], tops, None)


def pair_sampler(
    stacks: list[Any],
    norms: list[Normalization],
    config: Config,
    estimates: dict[Any, DepthDegradation] | None = None,
    columns: list[Columns] | None = None,
    defocus_only: list[bool] | None = None,
    resized: list[tuple[Any, float] | None] | None = None,
    voxel_sizes: list[tuple[float, float, float] | None] | None = None,
) -> PairSampler | None:
    """Estimate each stack's degradation by depth (from the stack alone) and sample pairs from it.

    Stacks whose blur by depth could not be measured (estimate not `reliable`) make no pairs: pairs
    from a wrong blur curve would teach the model a wrong condition. None when no stack is left.
    `estimates` caches the estimate per stack object, so a stack that also validates is estimated once.
    `columns`: the band of x each stack's pairs come from (see WindowSampler). `defocus_only` marks
    stacks degraded by defocus alone: the part of a stack above its focus (turned over, its far end
    is nearer the objective), whose light crosses less tissue, not more, so neither a halo nor a loss
    of signal grows there. Their pairs are blurred, without halo or attenuation. Measured anyway,
    both came out large, because the tissue's area shrinks towards a dome's cap (halo 0.95,
    attenuation 0.27); adapting on such pairs cost 1.26 dB on the focus-in-the-middle case of
    benchmarks/results/out_of_domain.md, and with blur alone it keeps the model's 21.40 dB there.
    `resized`: for a stack that is another resized in XY (the model's view of a stack at another
    pixel size), that stack at its own pixels and the zoom; its degradation is measured and its
    pairs are made there (see PairSampler), as enhancement measures a resized stack's blur.
    `voxel_sizes` (ZYX µm, of the stacks as given): with depth_aware.axial_ratio above 0, pairs
    are blurred along z too, by that ratio of their added lateral blur; a stack of unknown voxel
    size gets lateral blur only.
    """
    settings = config.depth_aware
    estimates = {} if estimates is None else estimates
    bands = columns if columns is not None else [None] * len(stacks)
    defocus = defocus_only if defocus_only is not None else [False] * len(stacks)
    sources = resized if resized is not None else [None] * len(stacks)
    sizes = voxel_sizes if voxel_sizes is not None else [None] * len(stacks)

    def estimate(data: Any, blur_only: bool) -> DepthDegradation:
        key = (id(data), blur_only)
        if key not in estimates:
            estimates[key] = estimate_degradation(
                data, reference_fraction=settings.reference_fraction, blur_only=blur_only
            )
        return estimates[key]

    kept: list[tuple[Any, Normalization, DepthDegradation, Columns, float, float]] = []
    for stack, norm, band, blur_only, source, size in zip(
        stacks, norms, bands, defocus, sources, sizes, strict=True
    ):
        zoom = 1.0
        if source is not None:  # bands are in the resized stack's columns
            stack, zoom = source
            if band is not None:
                band = (round(band[0] / zoom), min(round(band[1] / zoom), int(stack.shape[-1])))
        degradation = estimate(stack, blur_only)
        # slices of z blur per pixel of lateral blur, at the pixels the pairs are made at
        axial = 0.0 if size is None else settings.axial_ratio * size[1] * zoom / size[0]
        if degradation.reliable:
            kept.append((stack, norm, degradation, band, zoom, axial))
    if not kept:
        return None
    return PairSampler(
        [k[0] for k in kept],
        [k[1] for k in kept],
        [k[2] for k in kept],
        length=config.model.predict_next + 2,
        crop=config.data.crop,
        scale_px=settings.condition_scale_px,
        target_smoothing_px=settings.target_smoothing_px,
        augment=config.data.augment,
        columns=[k[3] for k in kept],
        zooms=[k[4] for k in kept],
        axial_px=[k[5] for k in kept],
    )


def pair_batch(pairs: PairSampler, count: int, rng: np.random.Generator) -> Batch:
    inputs, targets, levels = pairs.sample(count, rng)
    return Batch(inputs, targets[:, 1:], torch.zeros(count, dtype=torch.bool), levels)


def training_batch(
    sampler: WindowSampler, pairs: PairSampler | None, config: Config, share: range | None = None
) -> Batch:
    """One batch: windows, plus (depth-aware mode) a share of degraded pairs.

    `share` (a DDP rank's) keeps only those positions of the global batch [windows, pairs]: windows
    outside it are drawn but not read; pairs are made whole on every rank and cut, so each rank's
    generator stays in step.
    """
    size = config.train.batch_size
    count = 0 if pairs is None else int(round(size * config.depth_aware.pair_fraction))
    windows = size - count
    batch = None
    if windows > 0:
        keep = None if share is None else range(share.start, min(share.stop, windows))
        drawn = window_batch(*sampler.sample(windows, keep))
        batch = drawn if keep is None or len(keep) else None
    if pairs is not None and count:
        paired = pair_batch(pairs, count, sampler.rng)
        if share is not None:
            paired = paired.part(max(share.start - windows, 0), max(share.stop - windows, 0))
        if paired.inputs.shape[0]:
            batch = paired if batch is None else batch.join(paired)
    assert batch is not None
    return batch
