"""A learned segmentation as a second yardstick: a boundary network and a watershed (PlantSeg-style).

The seeded watershed of `dqlr.evaluation.segmentation` reads walls from intensity alone; on the
clean deepest third of the validation plant it finds 82 % of the true cells. Tools biologists use
for membrane stacks (PlantSeg, for instance) first predict a wall probability with a trained
network, then cut the stack along it. This module is the same two steps, small enough for a CPU:

- `BoundaryNet`: a three-level 2-D U-Net that sees a slice with its neighbours above and below
  (`context` slices each side, as channels: a wall lying flat in the slice, or a cell the slice
  only grazes, shows in the next slice) and gives each pixel's probability of lying on a wall.
  Every slice is scaled by its own p1-p99 range first, as the watershed's slices are, so raw,
  smoothed and enhanced stacks of any dtype or brightness look alike to it.
- a distance-transform watershed on that map: pixels below `threshold` are cell interiors, seeds
  are the maxima of their (smoothed) distance to the walls, the flood runs on the probability;
  segments mostly outside the tissue and slices with no cells are dropped as in the intensity
  watershed.

It needs training on labelled stacks (`train_boundary_model`; the simulator's labels, or a user's
own annotations). Trained only on the upper two thirds of the training plants (their observed and
clean slices), it has never seen deep degradation: it stands for a segmenter trained on good data,
which is what a user downloads. benchmarks/boundary_segmentation.py trains one and scores every
method with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.segmentation import find_boundaries, watershed
from tqdm import tqdm

from dqlr.atomic import atomic_path
from dqlr.errors import DqlrError
from dqlr.evaluation.segmentation import SegmentationSettings, _inside_tissue, _no_cells

FORMAT = "dqlr-boundaries"
VERSION = 1
_INTENSITY = SegmentationSettings()  # the empty-slice test of the intensity watershed, as it is


@dataclass(frozen=True)
class BoundarySettings:
    """The watershed on the wall probability: interiors below `threshold`; seeds are maxima of the
    distance to the walls after smoothing by `seed_sigma_px`, at least `min_distance_px` apart;
    segments under `min_cell_px` pixels lose their seed to their neighbours."""

    threshold: float = 0.3
    seed_sigma_px: float = 1.0
    min_distance_px: int = 3
    min_cell_px: int = 16


@dataclass
class BoundaryModel:
    """A trained wall network, the watershed settings to use with it and what it learnt from."""

    network: Any  # BoundaryNet
    settings: BoundarySettings = field(default_factory=BoundarySettings)
    trained_on: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> int:
        return int(self.network.context)


def _network_class() -> type:
    """BoundaryNet, defined on first use so that importing dqlr.evaluation does not import torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BoundaryNet(nn.Module):
        """Three-level 2-D U-Net: 2 * context + 1 scaled slices in, one wall logit per pixel out."""

        def __init__(self, context: int = 1, channels: int = 16) -> None:
            super().__init__()
            self.context, self.channels = context, channels

            def block(c_in: int, c_out: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.GroupNorm(4, c_out),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c_out, c_out, 3, padding=1),
                    nn.GroupNorm(4, c_out),
                    nn.ReLU(inplace=True),
                )

            c = channels
            self.down1, self.down2, self.down3 = (
                block(2 * context + 1, c),
                block(c, 2 * c),
                block(2 * c, 4 * c),
            )
            self.up2, self.up1 = block(6 * c, 2 * c), block(3 * c, c)
            self.head = nn.Conv2d(c, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            x = F.pad(x, (0, -width % 4, 0, -height % 4), mode="reflect")
            a = self.down1(x)
            b = self.down2(F.max_pool2d(a, 2))
            c = self.down3(F.max_pool2d(b, 2))
            b = self.up2(torch.cat([F.interpolate(c, size=b.shape[-2:]), b], 1))
            a = self.up1(torch.cat([F.interpolate(b, size=a.shape[-2:]), a], 1))
            return self.head(a)[..., :height, :width]

    return BoundaryNet


def new_network(context: int = 1, channels: int = 16) -> Any:
    """An untrained BoundaryNet."""
    return _network_class()(context, channels)


def scaled_slice(plane: Any) -> np.ndarray:
    """A slice scaled by its own p1-p99 range (float32), as the networks and the watershed see it."""
    plane = np.asarray(plane, np.float64)
    low, high = np.percentile(plane, [1, 99])
    return ((plane - low) / max(high - low, 1e-12)).astype(np.float32)


def window(stack: Any, z: int, context: int) -> np.ndarray:
    """Slice z with `context` slices each side (repeated at the stack's ends), each scaled alone."""
    depth = int(stack.shape[0])
    return np.stack(
        [scaled_slice(stack[int(k)]) for k in np.clip(np.arange(z - context, z + context + 1), 0, depth - 1)]
    )


def wall_target(labels: np.ndarray) -> np.ndarray:
    """What the network learns: 1 on the pixels on either side of a change of label."""
    return find_boundaries(np.asarray(labels), mode="thick").astype(np.float32)


def _training_slices(
    stacks: Sequence[Any], labels: Sequence[Any], depth_share: float, context: int
) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = [], []
    for stack, truth in zip(stacks, labels, strict=True):
        if tuple(stack.shape) != tuple(truth.shape) or len(stack.shape) != 3:
            raise DqlrError(
                f"a training stack of shape {tuple(stack.shape)} needs ZYX labels of the same shape, "
                f"got {tuple(truth.shape)}"
            )
        for z in range(max(1, round(depth_share * int(stack.shape[0])))):
            cells = np.asarray(truth[z])
            if len(np.unique(cells)) > 2:  # at least two cells: there are walls to learn
                inputs.append(window(stack, z, context))
                targets.append(wall_target(cells))
    if not inputs:
        raise DqlrError(
            "the training labels hold no slice with two or more cells; nothing to learn walls from"
        )
    return np.stack(inputs), np.stack(targets)


def train_boundary_model(
    stacks: Sequence[Any],
    labels: Sequence[Any],
    *,
    depth_share: float = 2 / 3,
    steps: int = 3000,
    minutes: float | None = None,
    context: int = 1,
    channels: int = 16,
    crop: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    settings: BoundarySettings = BoundarySettings(),
    progress: bool = True,
) -> BoundaryModel:
    """Train a wall network on ZYX stacks and their cell labels (pass a stack and its clean version
    with the same labels to teach it both looks).

    Only the upper `depth_share` of each stack is used: a segmenter trained on good slices, not on
    the deep degradation the enhancement is judged on. Stops after `steps` or `minutes`, whichever
    comes first. Random crops, quarter turns, flips and a brightness jitter; binary cross-entropy
    with the walls weighed up by the square root of their rarity. Torch's global random state is
    left as it was.
    """
    import torch
    from torch.nn import functional as F

    inputs, targets = _training_slices(stacks, labels, depth_share, context)
    crop = min(crop, inputs.shape[-2], inputs.shape[-1])
    rng = np.random.default_rng(seed)
    wall_share = float(targets.mean())
    weight = torch.tensor(np.sqrt((1 - wall_share) / max(wall_share, 1e-6)), dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = new_network(context, channels)
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    network.train()
    done, losses = 0, []
    bar = tqdm(range(steps), desc="train segmenter", unit="step", disable=not progress)
    for _ in bar:
        if deadline is not None and time.monotonic() > deadline:
            break
        done += 1
        pick = rng.integers(0, len(inputs), batch_size)
        ys = rng.integers(0, inputs.shape[-2] - crop + 1, batch_size)
        xs = rng.integers(0, inputs.shape[-1] - crop + 1, batch_size)
        x = np.stack([inputs[i, :, y : y + crop, q : q + crop] for i, y, q in zip(pick, ys, xs, strict=True)])
        t = np.stack([targets[i, y : y + crop, q : q + crop] for i, y, q in zip(pick, ys, xs, strict=True)])
        turns = int(rng.integers(4))
        x, t = np.rot90(x, turns, (2, 3)), np.rot90(t, turns, (1, 2))
        if rng.random() < 0.5:
            x, t = x[..., ::-1], t[..., ::-1]
        x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.2, 0.2)
        logits = network(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        loss = F.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(np.ascontiguousarray(t))[:, None], pos_weight=weight
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    network.eval()
    trained_on = {
        "stacks": len(stacks),
        "slices": len(inputs),
        "depth_share": depth_share,
        "steps": int(done),
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }
    return BoundaryModel(network, settings, trained_on)


def wall_probability(stack: Any, z: int, model: BoundaryModel) -> np.ndarray:
    """The network's wall probability for slice z of a ZYX stack."""
    import torch

    with torch.inference_mode():
        logits = model.network(torch.from_numpy(window(stack, z, model.context))[None])
    return torch.sigmoid(logits)[0, 0].numpy()


def cut_along_walls(probability: np.ndarray, settings: BoundarySettings) -> np.ndarray:
    """Distance-transform watershed of a wall-probability map (labels from 1, every pixel labelled)."""
    interior = probability < settings.threshold
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(interior), settings.seed_sigma_px)
    peaks = peak_local_max(
        distance, min_distance=settings.min_distance_px, labels=label(interior), exclude_border=False
    )
    seeds = np.zeros(probability.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(probability, seeds)
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < settings.min_cell_px)
    if small[small > 0].size:
        seeds[np.isin(labels, small) & (seeds > 0)] = 0
        labels = watershed(probability, seeds) if seeds.any() else np.ones_like(labels)
    return labels


def segment_slice_learned(
    stack: Any,
    z: int,
    model: BoundaryModel,
    settings: BoundarySettings | None = None,
    probability: np.ndarray | None = None,
) -> np.ndarray:
    """Cell labels of slice z of a ZYX membrane stack, cut along the network's walls (0 outside the
    tissue; all 0 on a slice with no cells). Reads slice z and its neighbours only. `probability`:
    the slice's wall probability if already computed (to try several settings on one pass)."""
    plane = np.asarray(stack[z], np.float64)
    low, high = np.percentile(ndimage.gaussian_filter(plane, _INTENSITY.sigma_px), [1, 99])
    if _no_cells(plane, low, high, _INTENSITY):
        return np.zeros(plane.shape, np.int32)
    if probability is None:
        probability = wall_probability(stack, z, model)
    cells = cut_along_walls(probability, settings or model.settings)
    return _inside_tissue(cells, plane, float(low)).astype(np.int32)


def segment_stack_learned(
    stack: Any,
    model: BoundaryModel,
    settings: BoundarySettings | None = None,
    slices: Sequence[int] | None = None,
) -> np.ndarray:
    """`segment_slice_learned` for every slice of a ZYX stack, or only for `slices` (the rest 0)."""
    if len(stack.shape) != 3:
        raise DqlrError(f"segmenting a stack needs a ZYX stack, got shape {tuple(stack.shape)}")
    out = np.zeros(tuple(stack.shape), np.int32)
    for z in range(int(stack.shape[0])) if slices is None else slices:
        out[z] = segment_slice_learned(stack, z, model, settings)
    return out


def save_boundary_model(model: BoundaryModel, path: str | Path) -> Path:
    """Weights, architecture, watershed settings and provenance in one file, written atomically."""
    import torch

    state = {
        "format": FORMAT,
        "version": VERSION,
        "context": model.context,
        "channels": int(model.network.channels),
        "weights": model.network.state_dict(),
        "settings": asdict(model.settings),
        "trained_on": dict(model.trained_on),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_boundary_model(path: str | Path) -> BoundaryModel:
    """A segmenter saved by `save_boundary_model`; any other file is one DqlrError line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DqlrError(f"{path}: segmenter file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DqlrError(f"{path}: not a dqlr segmenter file ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DqlrError(f"{path}: not a dqlr segmenter file (make one with dqlr.train_boundary_model)")
    if state.get("version") != VERSION:
        raise DqlrError(
            f"{path}: a segmenter file of format {state.get('version')}; this dqlr reads {VERSION}"
        )
    network = new_network(int(state["context"]), int(state["channels"]))
    try:
        network.load_state_dict(state["weights"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise DqlrError(f"{path}: a damaged segmenter file ({str(error).splitlines()[0][:120]})") from None
    network.eval()
    return BoundaryModel(network, BoundarySettings(**state["settings"]), dict(state.get("trained_on", {})))
