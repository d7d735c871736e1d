"""Whole-stack inference: slice by slice down z, tile by tile, streaming from and to disk.

Each slice goes through E, then R with the latent of the slice above as hidden state (the top slice
uses the initial state), then Q and G. Latents of the previous slice are kept per tile, so every
slice is encoded once. Memory holds two slices and their latents, never the whole stack.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from dqlr.atomic import refuse_existing
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError, DqlrWarning
from dqlr.inference.checks import assess
from dqlr.inference.tiling import Blender, tile_grid
from dqlr.io import (
    Layout,
    Stack,
    StackView,
    check_finite,
    check_stack,
    create_stack_writer,
    read_layout,
    read_stack,
    stack_format,
)
from dqlr.normalize import Normalization, denormalize, fit_normalization, normalize

# torch (and what imports it) loads on first use, not with this module: checking the inputs and
# outputs of `dqlr enhance` comes first and must not wait 2-3 s for it.
if TYPE_CHECKING:
    from dqlr.inference.engines import Engine
    from dqlr.model.checkpoint import LoadedModel

ModelLike: TypeAlias = "LoadedModel | str | Path | None"
# A channel or time point of a file: one index, every one ("all"), or None where the file has one.
Pick: TypeAlias = int | Literal["all"] | None


def as_model(model: ModelLike, device: str = "auto") -> LoadedModel:
    """A loaded model on `device`; "auto" leaves an already loaded model where it is."""
    from dqlr.model.checkpoint import LoadedModel, load_model
    from dqlr.runtime import pick_device, surely_cpu

    if not isinstance(model, LoadedModel):
        return load_model(model, device=device)
    if device == "auto" or (surely_cpu(device) and model.device_type == "cpu"):
        return model
    if model.device != pick_device(device):
        model.network.to(pick_device(device))
    return model


MIN_TILE = 64  # smallest tile tried after running out of memory
BLAS_THREADS = 1  # NumPy's BLAS threads while the network runs (None: no limit; see iter_enhanced)
# Codes this much farther from the dictionary than on the model's validation stack mean unfamiliar
# structure. With the shipped default (dqlr.model.familiarity, top third of each stack): simulated
# SAM stacks of 12-48 slices measured 0.77-1.10; SAM stacks that start deep in the tissue or come
# through other optics 1.36-1.41 (the model still does well on those); nuclei 1.52 and a regular
# wall grid 1.63 (benchmarks/results/out_of_domain.md). The shipped paper-mode model: SAM stacks
# 0.70-1.06, deep-starting or other optics 1.66-1.79, nuclei 1.84, the grid 2.63.
UNFAMILIAR_RATIO = 1.45
FAMILIAR_MIN_SIDE = 128  # slices smaller than this (as the model sees them) are not judged
# The guard (see `explains`): the scale at which a result must account for the observed slice, the
# unexplained share above which it does not, and the smoothing that replaces such a slice (model pixels).
GUARD_SIGMA_PX = 4.0
GUARD_BLOCK = 4
GUARD_UNEXPLAINED = 0.5
FALLBACK_SIGMA_PX = 1.0


def iter_enhanced(
    stack: Any,
    model: LoadedModel,
    norm: Normalization,
    options: EnhanceOptions,
    progress: tqdm | None = None,
    levels: np.ndarray | None = None,
    window: tuple[slice, slice] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Yield, for each slice from the top, the enhanced slice (normalised float32), the predicted
    next slices (predict_next, H, W) when options.predict_next > 0 (else None), and the observed
    slice as the network saw it (normalised).

    `levels` (Z,) are the degradation levels a depth-aware model is conditioned on (see
    `degradation_levels`); None for a paper-mode model. When the device runs out of memory the
    slice is retried with half the batch, then half the tile size (down to MIN_TILE, overlap at
    most a quarter tile), and the run goes on with the smaller setting.

    `window` (YX slices of the plane) gives only that part, equal to the same part of the whole
    slice: the whole slice's tiles that touch it are run (its halo) and only their bounding box is
    read, so a tile-parallel task holds its window, not the slice.
    """
    from dqlr.inference.engines import pick_engine

    engine = pick_engine(model, options.engine, options.predict_next)
    depth, height, width = stack.shape
    align = model.config.model.downsample
    tile = max(options.tile // align * align, align)
    batch_size, overlap = options.batch_size, options.overlap
    regions, box = window_grid((height, width), tile, overlap, align, window)
    above: Sequence[Any] | None = [None] * len(regions)
    # NumPy's BLAS threads keep spinning after each call (the guard's dot products, ...) and took
    # the cores from the network's threads: 20 % of its time on 2 cores (enhance_speed.md).
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        for z in range(depth):
            plane = _read_plane(stack, z, box, norm)
            level = None if levels is None else float(levels[z])
            while True:
                try:
                    if above is None:  # new tile grid: the slice above's latents on it
                        level_above = None if levels is None else float(levels[z - 1])
                        previous = _read_plane(stack, z - 1, box, norm)
                        above = _encode_tiles(engine, previous, regions, level_above, batch_size)
                    enhanced, predicted, latents = _enhance_slice(
                        engine, plane, regions, above, level, batch_size, overlap, options.predict_next
                    )
                    break
                except Exception as error:  # ONNX Runtime's errors are not RuntimeErrors
                    if not is_out_of_memory(error):
                        raise
                # Out of the except block, so the failed attempt's tensors are already released.
                if model.device_type == "cuda":
                    import torch

                    torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size //= 2
                elif min(tile, max(height, width)) > MIN_TILE:
                    tile = max(min(tile, max(height, width)) // 2 // align * align, MIN_TILE)
                    overlap = min(overlap, tile // 4)  # keeps the number of tiles in proportion
                    old_box = box
                    regions, box = window_grid((height, width), tile, overlap, align, window)
                    above = None if z > 0 else [None] * len(regions)
                    if box != old_box:
                        plane = _read_plane(stack, z, box, norm)
                else:
                    raise DqlrError(
                        f"out of memory even with {tile}-px tiles one at a time; free memory "
                        "or use another --device"
                    )
                tqdm.write(
                    f"dqlr enhance: out of memory; retrying with --tile {tile} --overlap {overlap} "
                    f"--batch-size {batch_size}"
                )
            above = latents
            if progress is not None:
                progress.update(1)
            if window is not None:  # the window's part of the bounding box
                inner = tuple(
                    slice(w.start - b.start, w.stop - b.start) for w, b in zip(window, box, strict=True)
                )
                enhanced, plane = enhanced[inner], plane[inner]
                predicted = None if predicted is None else predicted[(slice(None), *inner)]
            yield enhanced, predicted, plane


def window_grid(
    shape: tuple[int, int], tile: int, overlap: int, align: int, window: tuple[slice, slice] | None
) -> tuple[list[tuple[slice, slice]], tuple[slice, slice]]:
    """The whole slice's tile grid cut down to the tiles that touch `window`, in the coordinates of
    their bounding box, and that box (the whole slice when window is None).

    Blending inside the window is unchanged: a tile's ramp is only cut off at the box's edge where
    no tile beyond the box reaches into the window (see test_distributed)."""
    regions = tile_grid(shape, tile, overlap, align)
    if window is None:
        return regions, (slice(0, shape[0]), slice(0, shape[1]))
    kept = [
        r
        for r in regions
        if all(a.start < w.stop and w.start < a.stop for a, w in zip(r, window, strict=True))
    ]
    if not kept:
        raise ValueError(f"window {window} lies outside a slice of {shape}")
    y0, x0 = min(r[0].start for r in kept), min(r[1].start for r in kept)
    y1, x1 = max(r[0].stop for r in kept), max(r[1].stop for r in kept)
    shifted = [(slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)) for ys, xs in kept]
    return shifted, (slice(y0, y1), slice(x0, x1))


def _read_plane(stack: Any, z: int, box: tuple[slice, slice], norm: Normalization) -> np.ndarray:
    """Slice z's bounding box, checked and normalised."""
    raw = np.asarray(stack[(z, *box)])
    check_finite(raw, getattr(stack, "filename", None) or "input stack")
    return normalize(raw, norm)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the error a failed CPU allocation raises (torch or ONNX Runtime)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "failed to allocate memory"))


def _encode_tiles(
    engine: Engine,
    image: np.ndarray,
    regions: list[tuple[slice, slice]],
    level: float | None,
    batch_size: int,
) -> list[Any]:
    """Latents of `image` tile by tile (what the slice below needs as hidden state)."""
    latents: dict[int, Any] = {}
    order = sorted(range(len(regions)), key=lambda i: _shape(regions[i]))
    for batch in _batches(order, regions, batch_size):
        encoded = engine.encode(np.stack([image[regions[i]] for i in batch]), level)
        latents.update(zip(batch, encoded, strict=True))
    return [latents[i] for i in range(len(regions))]


def _enhance_slice(
    engine: Engine,
    current: np.ndarray,
    regions: list[tuple[slice, slice]],
    above: Sequence[Any],
    level: float | None,
    batch_size: int,
    overlap: int,
    predict_next: int,
) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """One slice through E, R (hidden state: `above`), Q and G, tile by tile; returns the blended
    slice, the predicted next slices and this slice's latents. Leaves `above` untouched, so a
    slice that ran out of memory can be retried."""
    height, width = current.shape
    enhanced = Blender((height, width), overlap)
    predicted = Blender((predict_next, height, width), overlap)
    latents: dict[int, Any] = {}
    order = sorted(range(len(regions)), key=lambda i: _shape(regions[i]))
    for batch in _batches(order, regions, batch_size):
        tiles = np.stack([current[regions[i]] for i in batch])
        slices, encoded = engine.step(tiles, level, [above[i] for i in batch])
        latents.update(zip(batch, encoded, strict=True))
        for k, i in enumerate(batch):
            enhanced.add(regions[i], slices[k, 0])
            if predict_next:
                predicted.add(regions[i], slices[k, 1:])
    result = enhanced.result(), predicted.result() if predict_next else None
    return *result, [latents[i] for i in range(len(regions))]


def _shape(region: tuple[slice, slice]) -> tuple[int, int]:
    return (region[0].stop - region[0].start, region[1].stop - region[1].start)


def _batches(order: list[int], regions: list[tuple[slice, slice]], size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == size or _shape(regions[i]) != _shape(regions[batch[0]])):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def degradation_levels(stack: Any, model: LoadedModel) -> tuple[np.ndarray | None, list[str]]:
    """Per-slice condition of a depth-aware model: the stack's own estimated extra blur by depth,
    and notes on what could not be estimated (then no conditioning: all levels 0).

    A view resized to the model's pixel size is measured at the stack's own pixels and its blur
    scaled by the zoom: enlarged 2x (0.5 µm pixels), the slices lose the fine band the estimate
    reads, and it found no blur at any depth, so the deep slices went in as if they were sharp.
    """
    if not model.config.conditioned:
        return None, []
    from dqlr.degradation import estimate_degradation

    zoom = 1.0
    if isinstance(stack, StackView) and stack.zoom != 1.0:
        stack, zoom = stack.at_own_pixels(), stack.zoom
    settings = model.config.depth_aware
    # Blur, halo and noise statistics are the same across a slice: a central crop of at most
    # 512 x 512 keeps memory and time bounded on large slices (full 2048^2 slices measured
    # 1.9 GB for 4 slices, growing with every slice).
    depth, height, width = stack.shape
    y0, x0 = max((height - 512) // 2, 0), max((width - 512) // 2, 0)
    view = stack[:, y0 : y0 + 512, x0 : x0 + 512]
    none = np.zeros(depth, np.float32)
    try:
        estimate = estimate_degradation(view, reference_fraction=settings.reference_fraction, blur_only=True)
    except DqlrError as error:
        return none, [
            f"depth degradation could not be estimated ({error}); enhanced without depth conditioning"
        ]
    notes = [f"depth estimate: {note}" for note in getattr(estimate, "notes", [])]
    if not getattr(estimate, "reliable", True):
        return none, [*notes, "the blur by depth could not be measured; enhanced without depth conditioning"]
    return np.asarray(estimate.blur_sigma_px, np.float32) * zoom / settings.condition_scale_px, notes


def fit_stack_normalization(stack: Any, model: LoadedModel) -> Normalization:
    """Per-stack percentiles, as the model was trained with (never per slice)."""
    data = model.config.data
    return fit_normalization(stack, data.percentile_low, data.percentile_high)


@dataclass
class Plan:
    """How one stack goes through a model: the views the model sees (one, or two when the stack is
    sharpest inside: the part below the focus and the part above it turned over), their depth
    levels, the stack's normalisation, and what the user should be told."""

    views: list[StackView]
    norm: Normalization
    levels: list[np.ndarray | None]
    notes: list[str]
    guarded: list[int] = field(default_factory=list)  # source slices replaced by the guard

    @property
    def depth(self) -> int:
        return len({v.source_index(z) for v in self.views for z in range(v.shape[0])})

    def guard_notes(self) -> list[str]:
        """One line on the slices the guard replaced (after enhancement), or none."""
        if not self.guarded:
            return []
        shown = ", ".join(map(str, sorted(self.guarded)[:8])) + (", ..." if len(self.guarded) > 8 else "")
        return [
            f"{len(self.guarded)} of {self.depth} slices (z = {shown}) are plain smoothing of the "
            "input: the model's result did not explain their coarse structure (--no-guard, in Python "
            "guard=False, to keep it)"
        ]


def model_views(
    data: Any,
    model: LoadedModel,
    options: EnhanceOptions,
    voxel_size: tuple[float, float, float] | None = None,
) -> tuple[list[StackView], list[str]]:
    """The stack as the model expects it (sharp end on top, the model's pixel size), and notes on
    what had to change; training on a user's stack (adapt) and enhancing it both see these views.

    A stack sharpest inside (at slice k) gives two views, each with its sharp end on top: slices
    k..end, and slices 0..k turned over; slice k is in both (enhanced from the lower part).
    """
    trained = model.meta.get("voxel_size")
    findings = assess(
        data,
        options.sharp_end,
        voxel_size,
        tuple(trained) if trained else None,
        options.match_pixel_size,
    )
    if findings.focus is not None:
        k, zoom = findings.focus, findings.zoom
        return [StackView(data, zoom=zoom, start=k), StackView(data, True, zoom, stop=k + 1)], findings.notes
    return [StackView(data, flip=findings.flip, zoom=findings.zoom)], findings.notes


def plan_enhancement(
    data: Any,
    model: LoadedModel,
    options: EnhanceOptions,
    voxel_size: tuple[float, float, float] | None = None,
) -> Plan:
    """Measure an input (already passed through io.check_stack) against the model's assumptions."""
    views, notes = model_views(data, model, options, voxel_size)
    levels = []
    for view in views:
        part_levels, more = degradation_levels(view, model)
        levels.append(part_levels)
        where = "" if len(views) == 1 else f"slices {view.start}-{view.stop - 1}: "
        notes += [where + note for note in more]
    norm = fit_stack_normalization(data, model)
    return Plan(views, norm, levels, notes + familiarity_notes(views[0], model, norm))


def model_quantization_error(model: LoadedModel, stack: Any, norm: Normalization) -> float | None:
    """dqlr.model.familiarity's quantization_error for a loaded model: from its ONNX graph when
    its torch network is not loaded (a shipped model on a CPU: no torch needed), else from the
    network."""
    from dqlr.model.familiarity import quantization_error, sample_slices

    if not model.config.model.quantize:
        return None
    if not model.has_network:
        from dqlr.inference.engines import OnnxEngine

        error = OnnxEngine(model).code_error(sample_slices(stack, norm))
        if error is not None:
            return float(error[0] / max(error[1], 1e-12))
    return quantization_error(model.network, stack, norm)


def familiarity_notes(view: StackView, model: LoadedModel, norm: Normalization) -> list[str]:
    """A note when the stack's structure is unlike the model's training data (see
    dqlr.model.familiarity); none for a model without a saved reference or quantizer."""
    from dqlr.model.familiarity import METRIC

    reference = float((model.meta.get("metrics") or {}).get(METRIC) or 0.0)
    if min(view.shape[1:]) < FAMILIAR_MIN_SIDE:  # codes near the border dominate: no fair judgement
        return []
    error = model_quantization_error(model, view, norm) if reference > 0 else None
    if error is None or error <= UNFAMILIAR_RATIO * reference:
        return []
    return [
        f"the structure of this stack is unlike the model's training data (its codes lie "
        f"{error / reference:.2f}x farther from the model's dictionary than on its validation stack), "
        "so it may draw familiar structure that is not there; try --adapt, and compare with plain smoothing"
    ]


def enhanced_slices(
    plan: Plan,
    model: LoadedModel,
    options: EnhanceOptions,
    progress: tqdm | None = None,
    window: tuple[slice, slice] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(source slice index, enhanced slice, predicted next slices) in the source's geometry and
    normalised units; slices come in the model's order (from the sharp end), view by view, each
    source slice once (and counted once in `progress`). With options.guard, a slice whose result
    fails `explains` is replaced by smoothing (recorded in plan.guarded).

    `window` (YX slices) gives only that part of each slice (see iter_enhanced), without the guard,
    which judges whole slices: a tile-parallel run judges them once all windows are written."""
    if window is not None and any(view.zoom != 1.0 for view in plan.views):
        raise DqlrError(
            "tile-parallel enhancement needs slices at the model's pixel size; "
            "pass --no-match-pixel-size or resample the stack first"
        )
    done: set[int] = set()
    plan.guarded.clear()  # a plan enhanced again starts its record afresh
    ticker = _WholeSlices(progress)
    for view, levels in zip(plan.views, plan.levels, strict=True):
        from_below = _enhanced_from_below(view, levels, model, plan.norm, options, window, ticker, done)
        step = 1.0 if from_below is None else 0.5  # each pass is half a slice's work
        for z, (enhanced, predicted, observed) in enumerate(
            iter_enhanced(view, model, plan.norm, options, None, levels, window)
        ):
            if from_below is not None:
                enhanced = 0.5 * (enhanced + from_below[z])
            source = view.source_index(z)
            if source in done:  # the focus slice of a split stack: kept from the lower part
                continue
            done.add(source)
            ticker.add(step)
            if options.guard and window is None and not explains(enhanced, observed):
                enhanced = ndimage.gaussian_filter(observed, FALLBACK_SIGMA_PX).astype(np.float32)
                plan.guarded.append(source)
            restored = None if predicted is None else view.restore_plane(predicted)
            yield source, view.restore_plane(enhanced), restored


def _enhanced_from_below(
    view: StackView,
    levels: np.ndarray | None,
    model: LoadedModel,
    norm: Normalization,
    options: EnhanceOptions,
    window: tuple[slice, slice] | None,
    ticker: _WholeSlices,
    done: set[int],
) -> np.ndarray | None:
    """With options.both_directions, the view enhanced bottom-up (each slice with the slice below
    as its context), in the view's order, to be averaged with the top-down pass; else None.

    The model was trained top-down, but its pairs share one degradation level across a window, so
    a neighbour from either side serves as context: the average scored above one pass on every
    plant and out-of-domain case we measured (benchmarks/results/both_directions.md). Holds the
    view's enhanced slices (float32) in memory. `ticker` advances half a slice for each slice of
    this pass not in `done` (the other half comes with the top-down pass; the focus slice of a
    split stack counts once).
    """
    if not options.both_directions:
        return None
    turned = StackView(view, flip=True)
    reversed_levels = None if levels is None else np.ascontiguousarray(levels[::-1])
    slices = []
    for z, (enhanced, _, _) in enumerate(
        iter_enhanced(turned, model, norm, options, None, reversed_levels, window)
    ):
        slices.append(enhanced)
        if view.source_index(turned.source_index(z)) not in done:
            ticker.add(0.5)
    return np.stack(slices[::-1])


class _WholeSlices:
    """Passes whole slices to a progress bar from half-slice steps, so the bar counts integers
    (24/24, not 24.0/24) when both directions each do half a slice's work."""

    def __init__(self, bar: tqdm | None) -> None:
        self.bar = bar
        self.owed = 0.0

    def add(self, amount: float) -> None:
        self.owed += amount
        whole = int(self.owed)
        if whole and self.bar is not None:
            self.bar.update(whole)
        self.owed -= whole


def _coarse(image: np.ndarray) -> np.ndarray:
    """The image smoothed over GUARD_SIGMA_PX pixels, computed on 4x4 block means (16x less work
    than smoothing the full slice; the blocks are well below the smoothing scale), flattened."""
    block = GUARD_BLOCK if min(image.shape) >= 8 * GUARD_BLOCK else 1
    h, w = (n // block * block for n in image.shape)
    means = np.asarray(image[:h, :w], np.float64).reshape(h // block, block, w // block, block).mean((1, 3))
    return np.asarray(ndimage.gaussian_filter(means, GUARD_SIGMA_PX / block)).ravel()


def explains(enhanced: np.ndarray, observed: np.ndarray) -> bool:
    """Data consistency at a coarse scale: does the result, smoothed and fitted affinely, account
    for most of the smoothed observed slice's variation?

    Smoothing over GUARD_SIGMA_PX pixels takes out noise and the blur the model undoes, and leaves
    where the structure is. On simulated plants the unexplained share stays below 0.25 on every
    slice, deep ones included; where the model erased the faint dome cap of a near-empty top slice
    it was 0.99 (benchmarks/results/out_of_domain.md).
    """
    seen, made = _coarse(observed), _coarse(enhanced)
    spread = seen.var()
    if spread <= 1e-12:
        return True
    made = made - made.mean()
    slope = float(made @ (seen - seen.mean())) / max(float(made @ made), 1e-12)
    unexplained = float(np.var(seen - seen.mean() - slope * made)) / spread
    return unexplained <= GUARD_UNEXPLAINED


def enhance(
    stack: np.ndarray,
    model: ModelLike = None,
    options: EnhanceOptions | None = None,
    *,
    progress: bool | Callable[[int, int], object] = False,
    **settings: Any,
) -> np.ndarray:
    """Enhance a ZYX stack in memory; returns a stack of the same shape and dtype.

    `model`: a LoadedModel, a checkpoint path, a shipped model's name, or None for the shipped
    default. Settings of EnhanceOptions may be given as keywords. What differs from the model's
    assumptions (sharp end, pixel size, no depth trend, estimate fallbacks) is reported as a
    DqlrWarning; predictions of the next slices are only written by enhance_file. `progress`:
    True for a bar on the terminal, or a callable called as progress(slices done, total) after
    each slice, for a GUI or notebook; an exception it raises stops the run (a cancel button).
    """
    options = EnhanceOptions.of(options, **settings)
    if options.predict_next:
        raise DqlrError("enhance: predict_next needs an output file; use enhance_file or `dqlr enhance`")
    voxel_size = options.voxel_size
    check_stack(stack, "input stack")
    loaded = as_model(model, options.device)
    plan = plan_enhancement(stack, loaded, options, voxel_size)
    for note in plan.notes:
        warnings.warn(note, DqlrWarning, stacklevel=2)
    out = np.empty(stack.shape, stack.dtype)
    depth = stack.shape[0]
    with tqdm(total=depth, desc="enhance", unit="slice", disable=progress is not True) as bar:
        for done, (z, slice_, _) in enumerate(enhanced_slices(plan, loaded, options, bar), start=1):
            out[z] = denormalize(slice_, plan.norm, stack.dtype)
            if callable(progress):
                progress(done, depth)
    for note in plan.guard_notes():
        warnings.warn(note, DqlrWarning, stacklevel=2)
    return out


def provenance(model: LoadedModel, notes: Sequence[str]) -> str:
    """What an output file records about how it was made: dqlr's version, the model, the notes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("dqlr")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "(version unknown)"
    name = Path(model.path).name if model.path else "an in-memory model"
    return "\n".join([f"enhanced by dqlr {release} with {name}", *(f"note: {n}" for n in notes)])


def _next_path(output: Path, k: int) -> Path:
    fmt = stack_format(output)
    suffix = {"ome-tiff": ".ome.tif", "tiff": ".tif", "zarr": ".zarr"}[fmt]
    stem = output.name[: -len(suffix)] if output.name.lower().endswith(suffix) else output.stem
    return output.with_name(f"{stem}.next{k}{suffix}")


def input_stacks(
    path: Path, channel: Pick, timepoint: Pick
) -> tuple[Layout, list[tuple[tuple[int, int], Stack]]]:
    """The stacks of a file to enhance, each (lazily read) with its place in the output (time
    point, channel), and the output's layout: the file's own, less the axes where one index
    was picked."""
    first = read_stack(
        path,
        channel=0 if channel == "all" else channel,
        timepoint=0 if timepoint == "all" else timepoint,
        lazy=True,
    )
    layout = read_layout(path)
    times = range(layout.size("T")) if timepoint == "all" else [timepoint]
    channels = range(layout.size("C")) if channel == "all" else [channel]
    stacks: list[tuple[tuple[int, int], Stack]] = []
    for t in times:
        for c in channels:
            stack = first if not stacks else read_stack(path, channel=c, timepoint=t, lazy=True)
            at = ((t or 0) if timepoint == "all" else 0, (c or 0) if channel == "all" else 0)
            stacks.append((at, stack))
    picked = layout.select(None if channel == "all" else channel, None if timepoint == "all" else timepoint)
    return picked, stacks


def _where(at: tuple[int, int], layout: Layout) -> str:
    """Which stack a note is about ("channel 1, time point 0: ") in an output of several; "" in
    an output of one."""
    named = [
        f"{name} {i}"
        for name, i, axis in (("time point", at[0], "T"), ("channel", at[1], "C"))
        if axis in layout.axes
    ]
    return ", ".join(named[::-1]) + ": " if named else ""


def output_paths(output: Path, predict_next: int) -> list[Path]:
    """The output and its `predict_next` companions (NAME.next1, ...)."""
    return [output] + [_next_path(output, k + 1) for k in range(predict_next)]


def _enhance_file(
    input_path: Path,
    output_path: Path,
    loaded: LoadedModel,
    options: EnhanceOptions,
    force: bool,
    channel: Pick,
    timepoint: Pick,
    progress: tqdm | None,
) -> tuple[list[Path], list[str]]:
    """enhance_file's work; returns the written paths and the notes for the user."""
    layout, stacks = input_stacks(input_path, channel, timepoint)
    stack_format(output_path)
    stack = stacks[0][1]
    voxel_size = options.voxel_size or stack.voxel_size
    plans, notes = [], []
    for at, each in stacks:
        check_stack(each.data, input_path)
        plans.append(plan_enhancement(each.data, loaded, options, voxel_size))
        notes += [_where(at, layout) + note for note in plans[-1].notes]
    info = "\n".join(filter(None, [stack.info, provenance(loaded, notes)]))
    shape, dtype = stack.data.shape, stack.data.dtype
    paths = output_paths(output_path, options.predict_next)
    with contextlib.ExitStack() as open_writers:  # on any error every temp output is removed
        writers = [
            open_writers.enter_context(
                create_stack_writer(
                    p,
                    shape,
                    dtype,
                    voxel_size,
                    force=force,
                    protect=[input_path],
                    info=info,
                    layout=layout,
                )
            )
            for p in paths
        ]
        for (at, _), plan in zip(stacks, plans, strict=True):
            for z, slice_, predicted in enhanced_slices(plan, loaded, options, progress):
                writers[0][(*at, z)] = denormalize(slice_, plan.norm, dtype)
                for k in range(options.predict_next):
                    assert predicted is not None
                    writers[k + 1][(*at, z)] = denormalize(predicted[k], plan.norm, dtype)
            for note in plan.guard_notes():  # known only now: stored when the outputs are finished
                notes.append(_where(at, layout) + note)
                for writer in writers:
                    writer.add_info(f"note: {notes[-1]}")
    return paths, notes


def enhance_file(
    input_path: str | Path,
    output_path: str | Path,
    model: ModelLike = None,
    options: EnhanceOptions | None = None,
    force: bool = False,
    channel: Pick = None,
    timepoint: Pick = None,
    progress: tqdm | None = None,
) -> list[Path]:
    """Enhance one file into another of the same format, dtype, axes and voxel size.

    `channel` / `timepoint` pick one stack of a multi-channel file or time series; "all"
    enhances every one, each as a stack of its own, into a file of the input's layout. The
    output carries the input's channel names, display ranges and LUTs, ImageJ Info and slice
    labels, and (OME-Zarr) the input's pyramid levels, computed from the enhanced stack.

    Slices stream from the (memory-mapped) input to the output, written to a temp file and renamed
    when complete; the input is never overwritten. With predict_next = n, n more stacks are
    written next to the output: slice i of `NAME.next{k}` is the prediction, from slice i, of the
    slice k further from the sharp end. Notes on the stack come as DqlrWarnings.
    """
    options = options or EnhanceOptions()
    loaded = as_model(model, options.device)
    paths, notes = _enhance_file(
        Path(input_path), Path(output_path), loaded, options, force, channel, timepoint, progress
    )
    for note in notes:
        warnings.warn(f"{input_path}: {note}", DqlrWarning, stacklevel=2)
    return paths


@dataclass
class FileOutcome:
    input: Path
    outputs: list[Path]
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    skipped: bool = False  # resume: the outputs were complete already


def enhance_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    model: ModelLike = None,
    options: EnhanceOptions | None = None,
    force: bool = False,
    channel: Pick = None,
    timepoint: Pick = None,
    progress: bool = True,
    resume: bool = False,
    client: Any = None,
) -> list[FileOutcome]:
    """Enhance several files (or folders of them) in turn; one failure does not stop the others.

    With one input, `output` is the output file; with several, a folder that receives files of the
    same names. With `resume`, outputs that exist are skipped: every write is atomic, so an output
    that exists is complete. With a `distributed.Client`, the stacks are enhanced on its cluster
    (dqlr.inference.distributed).
    """
    options = options or EnhanceOptions()
    if client is not None:
        from dqlr.inference import distributed

        return distributed.enhance_files(
            client, inputs, output, model, options, force, channel, timepoint, progress, resume
        )
    files, targets = file_targets(inputs, output)
    checked, shapes = check_targets(files, targets, force, channel, timepoint, resume, options.predict_next)
    if all(outcome is not None for outcome in checked):
        return [o for o in checked if o is not None]
    loaded = as_model(model, options.device)
    outcomes = []
    total = sum(shape[0] for shape, outcome in zip(shapes, checked, strict=True) if outcome is None)
    with tqdm(total=total, desc="enhance", unit="slice", disable=not progress) as bar:
        for source, target, outcome in zip(files, targets, checked, strict=True):
            if outcome is not None:
                outcomes.append(outcome)
                continue
            try:
                written, notes = _enhance_file(
                    source, target, loaded, options, force, channel, timepoint, bar
                )
                outcomes.append(FileOutcome(source, written, notes=notes))
            except DqlrError as error:
                outcomes.append(FileOutcome(source, [], str(error)))
    return outcomes


def file_targets(inputs: Sequence[str | Path], output: str | Path) -> tuple[list[Path], list[Path]]:
    """The input files (folders expanded) and their outputs: `output` itself for one input, else
    files of the same names in the folder `output`."""
    files = expand_inputs(inputs)
    output = Path(output)
    if len(files) > 1 or (output.exists() and output.is_dir() and stack_format_or_none(output) is None):
        output.mkdir(parents=True, exist_ok=True)
        return files, [output / f.name for f in files]
    return files, [output]


def check_targets(
    files: Sequence[Path],
    targets: Sequence[Path],
    force: bool,
    channel: Pick,
    timepoint: Pick,
    resume: bool,
    predict_next: int,
) -> tuple[list[FileOutcome | None], list[tuple[int, ...]]]:
    """Every check that needs no model, first, so a bad input or an existing output costs nothing:
    per input its outcome when it is settled already (a problem, or skipped by `resume`; else None)
    and the shape of its stacks (the slices of all the stacks it holds, then Y, X)."""
    outcomes: list[FileOutcome | None] = []
    shapes: list[tuple[int, ...]] = []
    for source, target in zip(files, targets, strict=True):
        paths = output_paths(target, predict_next)
        try:
            stack_format(target)
            if resume and all(p.exists() for p in paths):
                outcomes.append(FileOutcome(source, paths, skipped=True))
                shapes.append((0,))
                continue
            refuse_existing(target, force)
            _, stacks = input_stacks(source, channel, timepoint)  # every stack of the file is checked
            shapes.append((sum(stack.shape[0] for _, stack in stacks), *stacks[0][1].shape[1:]))
            outcomes.append(None)
        except DqlrError as error:
            outcomes.append(FileOutcome(source, [], str(error)))
            shapes.append((0,))
    return outcomes, shapes


def stack_format_or_none(path: Path) -> str | None:
    try:
        return stack_format(path)
    except DqlrError:
        return None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expand to the stacks they hold (TIFF, OME-TIFF, Zarr), sorted,
    without clean references, labels and next-slice predictions (a DqlrWarning names them)."""
    files: list[Path] = []
    skipped: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and stack_format_or_none(item) is None:
            found = sorted(p for p in item.iterdir() if stack_format_or_none(p) is not None)
            files += [p for p in found if not _not_an_input(p)]
            skipped += [p for p in found if _not_an_input(p)]
        else:
            files.append(item)
    if skipped:
        shown = ", ".join(p.name for p in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
        warnings.warn(
            f"skipped {len(skipped)} file(s) in the input folder that are not raw stacks (clean "
            f"references, labels or next-slice predictions): {shown}; name them to enhance them",
            DqlrWarning,
            stacklevel=2,
        )
    if not files:
        raise DqlrError(f"no stacks found in {', '.join(map(str, inputs))}")
    return files


def _not_an_input(path: Path) -> bool:
    """The simulator's NAME_clean / NAME_labels stacks, and dqlr's NAME.nextK predictions."""
    stem, _, rest = path.name.partition(".")
    return stem.endswith(("_clean", "_labels")) or rest.startswith("next")
