"""`dqlr enhance` on a Dask cluster: one task per stack, or one per XY block of a large stack.

dask.distributed does the scheduling: it places tasks, runs the tasks of a lost worker again
elsewhere and reports what is done; dqlr only cuts the work into tasks. Workers read their inputs
and write their outputs themselves (a file system all of them see), so only small records (plans,
notes, paths) pass through the client.

A stack becomes one task that runs the serial code (`_enhance_file`) and renames its finished
output into place. A stack whose slices are wider than `block`, written to Zarr, is cut into XY
blocks instead: its plan (checks, normalisation, depth levels) is made once by one task, each block
task runs every slice down z (the recurrence) for its block and its halo of tiles and writes its
own Zarr chunks into a temporary store, one task per slice then applies the guard to the whole
slice, and the client renames the store into place. Either way the result equals the serial run.

dask is imported here only, and this module only when a client is given.
"""

from __future__ import annotations

import contextlib
import glob
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from dqlr.atomic import remove
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError, DqlrWarning
from dqlr.inference.enhance import (
    FALLBACK_SIGMA_PX,
    FileOutcome,
    ModelLike,
    Pick,
    Plan,
    _enhance_file,
    as_model,
    check_targets,
    enhanced_slices,
    explains,
    file_targets,
    output_paths,
    plan_enhancement,
    provenance,
)
from dqlr.io import StackView, check_stack, create_stack_writer, read_stack, stack_format
from dqlr.normalize import Normalization, denormalize, normalize

if TYPE_CHECKING:
    from distributed import Client

    from dqlr.model.checkpoint import LoadedModel

BLOCK = 2048  # XY block of a tile-parallel task (px); slices wider than this are cut into blocks
ZARR_CHUNK = 1024  # the largest Zarr chunk side: a block is a whole number of chunks


@contextlib.contextmanager
def open_client(scheduler: str) -> Iterator[Client]:
    """A client for `--scheduler`: "local:N" starts a LocalCluster of N worker processes (one
    thread each) for the duration; anything else is the address of a running scheduler."""
    from distributed import Client, LocalCluster

    local = re.fullmatch(r"local:(\d+)", scheduler.strip())
    if local:
        n = int(local.group(1))
        if n < 1:
            raise DqlrError(f"--scheduler {scheduler}: needs at least one worker (local:1)")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        with cluster, Client(cluster) as client:
            yield client
        return
    if scheduler.startswith("local"):
        raise DqlrError(f"--scheduler {scheduler}: write local:N (N worker processes) or an address")
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as error:
        raise DqlrError(f"--scheduler {scheduler}: cannot reach the scheduler ({error})") from None
    with client:
        yield client


@dataclass(frozen=True)
class PlanRecord:
    """A Plan without the stack it reads: what every block task of one stack needs (small)."""

    views: list[tuple[bool, float, int, int]]  # flip, zoom, start, stop of each StackView
    norm: Normalization
    levels: list[np.ndarray | None]
    notes: list[str]
    voxel_size: tuple[float, float, float] | None

    @classmethod
    def of(cls, plan: Plan, voxel_size: tuple[float, float, float] | None) -> PlanRecord:
        views = [(v.flip, v.zoom, v.start, v.stop) for v in plan.views]
        return cls(views, plan.norm, plan.levels, plan.notes, voxel_size)

    def plan(self, data: Any) -> Plan:
        views = [StackView(data, flip, zoom, start, stop) for flip, zoom, start, stop in self.views]
        return Plan(views, self.norm, list(self.levels), list(self.notes))

    @property
    def resampled(self) -> bool:
        return any(zoom != 1.0 for _, zoom, _, _ in self.views)


@dataclass(frozen=True)
class Source:
    """One input: its file and the channel and time point taken from it ("all": every one, in
    one task)."""

    path: Path
    channel: Pick
    timepoint: Pick

    def read(self) -> Any:
        """The one stack of a tile-parallel run (never "all": those files go whole)."""
        if self.channel == "all" or self.timepoint == "all":
            raise DqlrError(f"{self.path}: every channel or time point goes in one task, not in blocks")
        return read_stack(self.path, channel=self.channel, timepoint=self.timepoint, lazy=True)


def enhance_files(
    client: Client,
    inputs: Sequence[str | Path],
    output: str | Path,
    model: ModelLike = None,
    options: EnhanceOptions | None = None,
    force: bool = False,
    channel: Pick = None,
    timepoint: Pick = None,
    progress: bool = True,
    resume: bool = False,
    block: int = BLOCK,
) -> list[FileOutcome]:
    """dqlr.inference.enhance.enhance_files on the cluster behind `client` (same outputs, same
    outcomes). Inputs and outputs must be paths every worker can reach.

    Stacks go one per task; a stack with slices wider than `block` pixels written to Zarr goes in
    XY blocks of `block` (tile-parallel; no predictions of next slices; one stack per file, not
    every channel or time point). With `resume`, outputs
    that exist are complete (every write is atomic) and are skipped. The model runs on the
    workers on options.device ("auto": their CPUs).
    """
    options = options or EnhanceOptions()
    files, targets = file_targets(inputs, output)
    outcomes, shapes = check_targets(files, targets, force, channel, timepoint, resume, options.predict_next)
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if not todo:
        return [o for o in outcomes if o is not None]
    # "auto" means the CPU here: the client's GPU says nothing about the workers'
    loaded = as_model(model, "cpu" if options.device == "auto" else options.device)
    _prepare_graph(loaded, options)
    shared = client.scatter(loaded, broadcast=True)  # one copy per worker, not one per task
    chunk = min(block, ZARR_CHUNK)
    block = max(block // chunk * chunk, chunk)
    sources = {i: Source(files[i], channel, timepoint) for i in todo}
    every = "all" in (channel, timepoint)  # one task per file: its stacks share one output file
    tiled = [i for i in todo if not every and _tiled(targets[i], shapes[i], block, options)]
    with tqdm(total=0, desc="enhance (cluster)", unit="task", disable=not progress) as bar:
        whole = {
            client.submit(_file_task, sources[i], targets[i], shared, options, force, pure=False): i
            for i in todo
            if i not in tiled
        }
        _grow(bar, len(whole))
        for i in tiled:  # their blocks queue behind the whole stacks already submitted
            outcomes[i] = _enhance_tiled(
                client, sources[i], targets[i], shared, loaded, options, force, block, bar
            )
        from distributed import as_completed

        for future in as_completed(whole):
            outcomes[whole[future]] = _outcome(files[whole[future]], future)
            bar.update(1)
    for i in todo:
        _remove_leftovers(targets[i], options.predict_next)
    return [o for o in outcomes if o is not None]


def _prepare_graph(model: LoadedModel, options: EnhanceOptions) -> None:
    """Export the ONNX graph once here, so workers do not each export it."""
    from dqlr.inference.engines import onnx_available

    onnx = options.engine != "torch" and not options.predict_next and onnx_available()
    if onnx and model.device.type == "cpu" and model.config.model.initial_state == "zero":
        model.step_graph()


def _tiled(target: Path, shape: tuple[int, ...], block: int, options: EnhanceOptions) -> bool:
    return stack_format(target) == "zarr" and max(shape[1:]) > block and not options.predict_next


def _grow(bar: tqdm, n: int) -> None:
    bar.total += n
    bar.refresh()


def _outcome(source: Path, future: Any) -> FileOutcome:
    """The outcome of a whole-stack task; a DqlrError (bad input) is that stack's failure."""
    try:
        paths, notes = future.result()
    except DqlrError as error:
        return FileOutcome(source, [], str(error))
    return FileOutcome(source, paths, notes=notes)


def _file_task(
    source: Source, target: Path, model: LoadedModel, options: EnhanceOptions, force: bool
) -> tuple[list[Path], list[str]]:
    """One stack on a worker, as the serial run does it. Outputs that exist already were written by
    an earlier attempt of this task (the client refused existing outputs) whose worker was lost
    after the rename: they are complete."""
    paths = output_paths(target, options.predict_next)
    if not force and all(p.exists() for p in paths):
        return paths, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DqlrWarning)
        return _enhance_file(
            source.path, target, model, options, force, source.channel, source.timepoint, None
        )


def _enhance_tiled(
    client: Client,
    source: Source,
    target: Path,
    shared: Any,
    loaded: LoadedModel,
    options: EnhanceOptions,
    force: bool,
    block: int,
    bar: tqdm,
) -> FileOutcome:
    """One large stack in XY blocks: plan (one task), blocks (written into a temporary Zarr store),
    the guard (one task per slice), then the rename here."""
    _grow(bar, 1)
    try:
        record = client.submit(_plan_task, source, shared, options, pure=False).result()
    except DqlrError as error:
        bar.update(1)
        return FileOutcome(source.path, [], str(error))
    bar.update(1)
    if record.resampled:  # blocks need the model's pixel size: the whole stack in one task
        _grow(bar, 1)
        future = client.submit(_file_task, source, target, shared, options, force, pure=False)
        outcome = _outcome(source.path, future)
        bar.update(1)
        return outcome
    try:
        return _enhance_blocks(client, source, target, shared, loaded, record, options, force, block, bar)
    except DqlrError as error:
        return FileOutcome(source.path, [], str(error))


def _enhance_blocks(
    client: Client,
    source: Source,
    target: Path,
    shared: Any,
    loaded: LoadedModel,
    record: PlanRecord,
    options: EnhanceOptions,
    force: bool,
    block: int,
    bar: tqdm,
) -> FileOutcome:
    stack = source.read()
    depth, height, width = (int(n) for n in stack.data.shape)
    shape = (depth, height, width)
    writer = create_stack_writer(
        target,
        shape,
        stack.data.dtype,
        record.voxel_size,
        force=force,
        protect=[source.path],
        info=provenance(loaded, record.notes),
        chunk=min(block, ZARR_CHUNK),
    )
    with writer:
        array = writer.shared_array()
        windows = [
            (slice(y, min(y + block, shape[1])), slice(x, min(x + block, shape[2])))
            for y in range(0, shape[1], block)
            for x in range(0, shape[2], block)
        ]
        blocks = [
            client.submit(_block_task, source, record, shared, options, array, w, pure=False) for w in windows
        ]
        _wait(blocks, bar)
        plan = record.plan(stack.data)
        if options.guard:
            judged = [
                client.submit(_judge_task, source, record.norm, array, z, pure=False) for z in range(shape[0])
            ]
            plan.guarded = [z for z, ok in enumerate(_wait(judged, bar)) if not ok]
            replaced = [
                client.submit(_replace_task, source, record.norm, array, z, pure=False) for z in plan.guarded
            ]
            _wait(replaced, bar)
        for note in plan.guard_notes():
            writer.add_info(f"note: {note}")
    return FileOutcome(source.path, [target], notes=record.notes + plan.guard_notes())


def _wait(futures: list[Any], bar: tqdm) -> list[Any]:
    """Results in order, counted on the bar as they come (from any worker)."""
    from distributed import as_completed

    _grow(bar, len(futures))
    for _ in as_completed(futures):
        bar.update(1)
    return [f.result() for f in futures]


def _plan_task(source: Source, model: LoadedModel, options: EnhanceOptions) -> PlanRecord:
    """A stack's checks, normalisation and depth levels, once (they read the whole stack)."""
    stack = source.read()
    check_stack(stack.data, source.path)
    voxel_size = options.voxel_size or stack.voxel_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DqlrWarning)
        plan = plan_enhancement(stack.data, model, options, voxel_size)
    return PlanRecord.of(plan, voxel_size)


def _block_task(
    source: Source,
    record: PlanRecord,
    model: LoadedModel,
    options: EnhanceOptions,
    array: Any,
    window: tuple[slice, slice],
) -> None:
    """One XY block down the whole stack, written straight into its own chunks of `array`
    (idempotent: a task run again after a lost worker writes the same values)."""
    stack = source.read()
    plan = record.plan(stack.data)
    for z, enhanced, _ in enhanced_slices(plan, model, options, window=window):
        array[(z, *window)] = denormalize(enhanced, plan.norm, array.dtype)


def _judge_task(source: Source, norm: Normalization, array: Any, z: int) -> bool:
    """The guard on one whole written slice: does it explain the observed slice (see `explains`)?"""
    observed = normalize(source.read().data[z], norm)
    return explains(normalize(array[z], norm), observed)


def _replace_task(source: Source, norm: Normalization, array: Any, z: int) -> None:
    """The guard's replacement of one slice: plain smoothing of the input, as the serial run does."""
    observed = normalize(source.read().data[z], norm)
    smoothed = ndimage.gaussian_filter(observed, FALLBACK_SIGMA_PX).astype(np.float32)
    array[z] = denormalize(smoothed, norm, array.dtype)


def _remove_leftovers(target: Path, predict_next: int) -> None:
    """Temporary outputs left by tasks whose worker was lost (the task ran again elsewhere)."""
    for path in output_paths(target, predict_next):
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
            remove(leftover)
