"""The public Python API: twelve functions of the same shape as the `dqlr` commands.

Each function imports its working module on first call, so `import dqlr` stays fast and a name
here never stands for a module (`dqlr.enhance` is always this function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dqlr.config import Config, EnhanceOptions, RunOptions

if TYPE_CHECKING:
    from dqlr.degradation import DepthDegradation
    from dqlr.evaluation.boundaries import BoundaryModel
    from dqlr.inference.enhance import FileOutcome
    from dqlr.io import Stack
    from dqlr.model.checkpoint import LoadedModel
    from dqlr.simulation import Optics, SimulatedPlant
    from dqlr.training.run import TrainResult

PathLike = str | Path
StackLike = str | Path | np.ndarray


def read_stack(
    path: PathLike, channel: int | None = None, timepoint: int | None = None, lazy: bool = False
) -> Stack:
    """Read one z-stack (TIFF, OME-TIFF, Zarr) as ZYX with its voxel size in µm.

    Multi-channel or time-lapse files need `channel` / `timepoint`; `lazy=True` reads a slice only
    when it is indexed (memory-mapped TIFF or Zarr chunks).
    """
    from dqlr.io import read_stack as _read_stack

    return _read_stack(path, channel=channel, timepoint=timepoint, lazy=lazy)


def write_stack(
    path: PathLike,
    data: np.ndarray,
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
) -> Path:
    """Write a ZYX stack atomically in the format its suffix names, keeping dtype and voxel size."""
    from dqlr.io import write_stack as _write_stack

    return _write_stack(path, data, voxel_size=voxel_size, force=force)


def simulate(
    shape: tuple[int, int, int] = (48, 256, 256),
    voxel_size: tuple[float, float, float] = (1.0, 0.25, 0.25),
    seed: int = 0,
    noise: float = 1.0,
    degradation: float = 1.0,
    optics: Optics | None = None,
    dtype: str = "uint16",
) -> SimulatedPlant:
    """Simulate a SAM membrane stack: .observed (degraded), .clean, .labels and the true degradation."""
    from dqlr.simulation import simulate_plant

    return simulate_plant(
        shape=shape,
        voxel_size=voxel_size,
        seed=seed,
        noise=noise,
        degradation=degradation,
        optics=optics,
        dtype=dtype,
    )


def estimate(
    stack: np.ndarray | Stack,
    voxel_size: tuple[float, float, float] | None = None,
    reference_fraction: float | None = None,
) -> DepthDegradation:
    """Estimate how the stack degrades with depth (blur, halo, attenuation, noise), from it alone.

    The default reference fraction is the one depth-aware models are trained and applied with, so
    the curves shown are the ones a model is conditioned on.
    """
    from dqlr.degradation import estimate_degradation
    from dqlr.io import Stack, check_stack

    data = stack.data if isinstance(stack, Stack) else stack
    check_stack(data, getattr(stack, "path", None) or "input stack")  # before any estimate work
    if reference_fraction is None:
        reference_fraction = Config().depth_aware.reference_fraction
    return estimate_degradation(stack, voxel_size=voxel_size, reference_fraction=reference_fraction)


def train(
    train_stacks: Sequence[StackLike],
    run_dir: PathLike,
    config: Config | None = None,
    val_stack: StackLike | None = None,
    resume: bool = False,
    run: RunOptions | None = None,
    stop_after_epochs: int | None = None,
    init: LoadedModel | str | Path | None = None,
    teacher: LoadedModel | str | Path | None = None,
) -> TrainResult:
    """Train a DQLR model on noisy stacks alone, into `run_dir` (checkpoints, metrics, curves.png).

    `config` is what the model is (saved with it); `run` how this run executes (device, threads,
    progress, max_minutes; never saved). `resume=True` continues the run in `run_dir` exactly.
    `init` starts from a model's weights (a shipped name or a file) to fine-tune it. `teacher`
    (the same kinds) distils it: the targets are that model's outputs, e.g. to make a smaller,
    faster network do what a trained one does.
    In processes started by torchrun it trains on all of them with DDP (rank 0 writes `run_dir`).
    """
    from dqlr.reporting.figures import CurvePlotter
    from dqlr.training.run import train as _train

    return _train(
        train_stacks,
        run_dir,
        config,
        val_stack=val_stack,
        resume=resume,
        run=run,
        stop_after_epochs=stop_after_epochs,
        callbacks=[CurvePlotter(Path(run_dir) / "curves.png")],
        init=init,
        teacher=teacher,
    )


def adapt(
    stacks: Sequence[StackLike],
    out_dir: PathLike,
    model: LoadedModel | str | Path | None = None,
    minutes: float = 3.0,
    run: RunOptions | None = None,
    options: EnhanceOptions | None = None,
) -> TrainResult:
    """Fine-tune a model (default: the shipped one) on your own stacks, self-supervised, within
    `minutes` of wall time; the adapted model is `result.best` (a complete model file).

    Each stack is first checked and presented as `enhance` would present it to the model (sharp end
    on top, the model's pixel size, normalised as the whole stack; `options` as for enhance), so the
    model learns the view it will be applied to; what had to change comes as a DqlrWarning.
    """
    import warnings

    from dqlr.errors import DqlrWarning
    from dqlr.inference.enhance import as_model, fit_stack_normalization, model_views
    from dqlr.io import Stack, check_stack
    from dqlr.io import read_stack as _read_stack
    from dqlr.reporting.figures import CurvePlotter
    from dqlr.training.adapt import adapt as _adapt
    from dqlr.training.trainer import TrainingStack

    options = EnhanceOptions.of(options)
    start = as_model(model, "cpu")
    trained = start.meta.get("voxel_size")
    prepared: list[StackLike | Stack | TrainingStack] = []
    for stack in [stacks] if isinstance(stacks, str | Path | np.ndarray | Stack) else stacks:
        if isinstance(stack, np.ndarray):
            data, voxel_size, name = stack, options.voxel_size, "input stack"
        elif isinstance(stack, Stack):  # as read_stack gives it: its voxel size comes along
            data, voxel_size = stack.data, options.voxel_size or stack.voxel_size
            name = stack.path or "input stack"
        else:
            read = _read_stack(stack, lazy=True)
            data, voxel_size, name = read.data, options.voxel_size or read.voxel_size, str(stack)
        check_stack(data, name)
        views, notes = model_views(data, start, options, voxel_size)
        for note in notes:
            warnings.warn(f"{name}: {note}", DqlrWarning, stacklevel=2)
        if len(views) > 1 or views[0].flip or views[0].zoom != 1.0:
            seen = voxel_size
            if trained and options.match_pixel_size:  # resampled in x and y only (unknown: assumed)
                seen = (
                    voxel_size[0] if voxel_size else float(trained[0]),
                    float(trained[1]),
                    float(trained[2]),
                )
            window = start.config.model.predict_next + 2  # slices a training window needs
            for view in views:
                if view.shape[0] < window:
                    warnings.warn(
                        f"{name}: slices {view.start}-{view.stop - 1} are too few to train on; left out",
                        DqlrWarning,
                        stacklevel=2,
                    )
            whole = fit_stack_normalization(data, start)  # what enhance will normalise with
            for k, view in enumerate(v for v in views if v.shape[0] >= window):
                part = f" part {k + 1}" if len(views) > 1 else ""
                label = f"{Path(name).name}{part} (as the model sees it)"
                above_focus = len(views) > 1 and view.flip  # defocus alone: see pair_sampler
                own = None  # pairs are made at the stack's own pixels (see PairSampler)
                if view.zoom != 1.0:
                    own = np.asarray(view.at_own_pixels())
                prepared.append(
                    TrainingStack(np.asarray(view), whole, label, seen, above_focus, own, view.zoom)
                )
        elif isinstance(stack, np.ndarray):
            prepared.append(Stack(stack, voxel_size, path=name))
        else:
            prepared.append(stack)
    plotter = CurvePlotter(Path(out_dir) / "curves.png")
    return _adapt(prepared, start, out_dir=out_dir, minutes=minutes, run=run, callbacks=[plotter])


def enhance(
    stack: np.ndarray | Stack,
    model: LoadedModel | str | Path | None = None,
    options: EnhanceOptions | None = None,
    *,
    progress: bool | Callable[[int, int], object] = False,
    **settings: Any,
) -> np.ndarray:
    """Enhance a ZYX stack (an array, or a Stack from read_stack, whose voxel size is used unless
    one is given); returns an array of the same shape and dtype.

    `model`: None (the shipped default), a shipped model's name ("paper", "depth-aware", ...), a
    checkpoint path, or a model from load_model(). Keywords set EnhanceOptions (tile, overlap,
    batch_size, device). `progress`: True for a bar on the terminal, or a callable called as
    progress(slices done, total) after each slice; an exception it raises stops the run.
    """
    from dqlr.errors import DqlrError
    from dqlr.inference.enhance import enhance as _enhance
    from dqlr.io import Stack

    if isinstance(stack, Stack):
        options = EnhanceOptions.of(options, **settings)
        settings = {}
        if options.voxel_size is None and stack.voxel_size is not None:
            options = EnhanceOptions.of(options, voxel_size=stack.voxel_size)
        stack = stack.data  # may be lazy (Zarr): read slice by slice
    elif isinstance(stack, str | Path):
        raise DqlrError(
            f"enhance takes an array or read_stack's Stack, not the path {str(stack)!r}; "
            "use dqlr.read_stack first, or dqlr.enhance_files for files"
        )
    return _enhance(stack, model, options, progress=progress, **settings)


def enhance_files(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    model: LoadedModel | str | Path | None = None,
    options: EnhanceOptions | None = None,
    *,
    channel: int | Literal["all"] | None = None,
    timepoint: int | Literal["all"] | None = None,
    force: bool = False,
    resume: bool = False,
    client: Any = None,
    progress: bool = True,
    **settings: Any,
) -> list[FileOutcome]:
    """Enhance files (or folders of them) into `output`, as `dqlr enhance` does: for one input the
    output file, else a folder receiving files of the same names, each of its input's format,
    dtype, layout and voxel size. One failure does not stop the others (each outcome's `error`).

    `channel` / `timepoint`: an index, or "all" for every one. `resume`: outputs that exist are
    complete (every write is atomic) and are skipped. `client`: a dask `distributed.Client`; the
    stacks are then enhanced on its cluster, with the same results.
    """
    from dqlr.inference.enhance import enhance_files as _enhance_files

    return _enhance_files(
        [inputs] if isinstance(inputs, str | Path) else list(inputs),
        output,
        model,
        EnhanceOptions.of(options, **settings),
        force,
        channel,
        timepoint,
        progress,
        resume=resume,
        client=client,
    )


def evaluate(
    result: np.ndarray,
    reference: np.ndarray | None = None,
    input: np.ndarray | None = None,
    *,
    labels: np.ndarray | None = None,
    segment: bool = False,
    volume: bool = False,
    segmenter: Any = None,
) -> dict[str, Any]:
    """Quality by depth: PSNR/SSIM against a clean reference if given, and always sharpness,
    membrane contrast and noise; with `input`, the gain over it per third of the stack. With true
    cell `labels` (or `segment`), a membrane segmentation scored (or counted) by depth, slice by
    slice or, with `volume`, as one 3-D watershed, or with `segmenter` (a model of
    `train_segmenter` or its file) cut along learned walls (as `dqlr evaluate --labels/--segment/
    --volume/--segmenter`)."""
    from dqlr.evaluation.metrics import evaluate as _evaluate

    return _evaluate(result, reference, input, labels, segment, volume, segmenter)


def train_segmenter(
    stacks: Sequence[StackLike],
    labels: Sequence[StackLike],
    out: PathLike | None = None,
    *,
    steps: int = 3000,
    minutes: float | None = None,
    depth_share: float = 2 / 3,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> BoundaryModel:
    """Train a learned segmenter (a wall network and a watershed, dqlr.evaluation.boundaries) on
    ZYX stacks and their cell labels (arrays or files; the upper `depth_share` of each), for
    `evaluate(..., segmenter=...)`. With `out`, saved there atomically (an existing file only with
    `force`). As `dqlr train-segmenter`."""
    from dqlr.atomic import refuse_existing
    from dqlr.errors import DqlrError
    from dqlr.evaluation.boundaries import save_boundary_model, train_boundary_model

    if out is not None:
        refuse_existing(out, force)
    if len(stacks) != len(labels) or not stacks:
        raise DqlrError(f"give one labels stack per stack: {len(stacks)} stacks, {len(labels)} labels")
    images = [_as_array(stack) for stack in stacks]
    truths = [_as_array(truth) for truth in labels]
    model = train_boundary_model(
        images, truths, steps=steps, minutes=minutes, depth_share=depth_share, seed=seed, progress=progress
    )
    if out is not None:
        save_boundary_model(model, out)
    return model


def _as_array(stack: StackLike) -> np.ndarray:
    return read_stack(stack).data if isinstance(stack, str | Path) else np.asarray(stack)


def load_model(path: PathLike | None = None, device: str = "cpu") -> LoadedModel:
    """Load a model file (or a shipped model by name; None for the default) for inference."""
    from dqlr.model.checkpoint import load_model as _load_model

    return _load_model(path, device=device)


def export(
    model: LoadedModel | PathLike | None,
    output: PathLike,
    format: Literal["bioimageio"] = "bioimageio",
    stack: PathLike | np.ndarray | None = None,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    name: str = "DQLR z-stack restoration",
    authors: list[str] | None = None,
    license: str = "BSD-3-Clause",
    force: bool = False,
    test: bool = True,
) -> Path:
    """Share a model outside dqlr: a bioimage.io package (.zip) that bioimage.io tools run, made
    from `model` (None: the shipped default) with `stack` as its example (default: a simulated one;
    a depth-aware model's package carries the blur curve estimated on it). With `test`,
    bioimageio.core's own test runs on the package. What the example showed comes as DqlrWarnings.
    """
    import warnings

    from dqlr.errors import DqlrError, DqlrWarning
    from dqlr.inference.export import export_bioimageio

    if format != "bioimageio":
        raise DqlrError(f"export: unknown format '{format}'; use bioimageio")
    path, notes = export_bioimageio(
        model,
        output,
        stack,
        voxel_size=voxel_size,
        name=name,
        authors=authors,
        license=license,
        force=force,
        test=test,
    )
    for note in notes:
        warnings.warn(note, DqlrWarning, stacklevel=2)
    return path
