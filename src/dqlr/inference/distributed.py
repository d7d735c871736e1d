"""`dqlr enhance` on a Dask cluster: one task per stack, or one per XY block of a large stack.

dask.distributed does the scheduling: it places tasks, runs the tasks of a lost worker again
elsewhere and reports what is done; dqlr only cuts the work into tasks. Workers read their inputs
and write their outputs themselves (a file system all of them see), so only small records (plans,
notes, paths) pass through the client.

A file of one stack becomes one task that runs the serial code (`_enhance_file`) and renames its
finished output into place. A file of several (every channel and/or time point) becomes one plan
task and one enhancement task per stack: the client creates the shared output with the plans'
notes, each stack task writes its planes straight into the temporary file (Zarr chunks, or planes
of the TIFF, each at its place), and the client closes it. A stack whose slices are wider than
`block`, written to Zarr, is cut into XY blocks instead: its plan (checks, normalisation, depth
levels) is made once by one task, each block task runs every slice down z (the recurrence) for its
block and its halo of tiles and writes its own Zarr chunks into a partial store, one task per
slice then applies the guard to the whole slice, and the client renames the store into place. The
partial store has a fixed name and records what it is made from and which blocks are done, so a
resumed run does only the rest. Every way, the result equals the serial run.

dask is imported here only, and this module only when a client is given.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from dqlr.atomic import partial_path, remove, write_text
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError, DqlrWarning
from dqlr.inference.enhance import (
    FALLBACK_SIGMA_PX,
    FileOutcome,
    ModelLike,
    Pick,
    Plan,
    _enhance_file,
    _where,
    as_model,
    check_targets,
    enhanced_slices,
    explains,
    file_targets,
    input_stacks,
    output_paths,
    plan_enhancement,
    provenance,
)
from dqlr.io import (
    Layout,
    StackView,
    StackWriter,
    check_stack,
    create_stack_writer,
    plane_index,
    read_stack,
    stack_format,
)
from dqlr.normalize import Normalization, denormalize, normalize

if TYPE_CHECKING:
    from distributed import Client

    from dqlr.model.checkpoint import LoadedModel

BLOCK = 2048  # XY block of a tile-parallel task (px); slices wider than this are cut into blocks
ZARR_CHUNK = 1024  # the largest Zarr chunk side: a block is a whole number of chunks
# Inside a partial store: the fingerprint, one marker per finished block, the guard's verdict.
RESUME = "dqlr-resume"


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
    """One input: its file and the channel and time point taken from it (an index, None where the
    file has one, or "all": every one)."""

    path: Path
    channel: Pick
    timepoint: Pick

    def read(self) -> Any:
        """The one stack of a stack or block task (never "all": such a file goes stack by stack)."""
        if self.channel == "all" or self.timepoint == "all":
            raise DqlrError(f"{self.path}: every channel or time point is read one stack at a time")
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

    A file goes as one task; with `channel` / `timepoint` "all", each of its stacks is a task of
    its own (stacks wider than `block` are not cut into blocks then). A stack with slices wider
    than `block` pixels written to Zarr goes in XY blocks of `block` (tile-parallel; not with
    predictions of next slices). With `resume`, outputs that exist are complete (every write is
    atomic) and are skipped, and a tile-parallel stack made from the same input, model and
    settings goes on from the blocks an interrupted run finished (its partial store is kept when
    a run stops). The model runs on the workers on options.device ("auto": their CPUs).
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
    # The model is the result of a task, not scattered data: each worker fetches it once, and when
    # the workers holding it are lost (killed, or restarted by their nanny for memory) the scheduler
    # computes it again from the task; scattered data would be gone and every task needing it cancelled.
    shared = client.submit(_the_model, loaded, pure=False)
    chunk = min(block, ZARR_CHUNK)
    block = max(block // chunk * chunk, chunk)
    sources = {i: Source(files[i], channel, timepoint) for i in todo}
    every = "all" in (channel, timepoint)
    # With predictions a file writes NAME.nextK beside its output, from every stack; stack tasks
    # write into one shared output, so such a file stays one task that runs the serial code.
    stacked = [i for i in todo if every and not options.predict_next]
    tiled = [i for i in todo if not every and _tiled(targets[i], shapes[i], block, options)]
    with (
        tqdm(total=0, desc="enhance (cluster)", unit="task", disable=not progress) as bar,
        contextlib.ExitStack() as writers,  # on any error every temporary output is removed
    ):
        whole = {
            client.submit(_file_task, sources[i], targets[i], shared, options, force, pure=False): i
            for i in todo
            if i not in tiled and i not in stacked
        }
        _grow(bar, len(whole))
        split = {i: StackTasks(client, sources[i], targets[i], shared, options) for i in stacked}
        for i, work in split.items():  # each waits for its plans; the others' run meanwhile
            outcomes[i] = work.start(loaded, force, writers, bar)
        for i in tiled:  # their blocks queue behind the tasks already submitted
            outcomes[i] = _enhance_tiled(
                client, sources[i], targets[i], shared, loaded, options, force, block, resume, bar
            )
        for i, work in split.items():
            if outcomes[i] is None:
                outcomes[i] = work.finish(bar)
        from distributed import as_completed

        for future in as_completed(whole):
            outcomes[whole[future]] = _outcome(files[whole[future]], future)
            bar.update(1)
    for i in todo:
        _remove_leftovers(targets[i], options.predict_next)
    return [o for o in outcomes if o is not None]


def _the_model(model: LoadedModel) -> LoadedModel:
    return model


def _prepare_graph(model: LoadedModel, options: EnhanceOptions) -> None:
    """Export the ONNX graph once here, so workers do not each export it."""
    from dqlr.inference.engines import onnx_available

    onnx = options.engine != "torch" and not options.predict_next and onnx_available()
    if onnx and model.device_type == "cpu" and model.config.model.initial_state == "zero":
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


class StackTasks:
    """A file of several stacks (every channel and/or time point) as tasks of their own that share
    one output: one plan task per stack (checks, normalisation, depth levels, notes), the output
    created here with the plans' notes in its info as the serial run does, then one task per stack
    that enhances it and writes its planes straight into the temporary output, closed here.

    Planning first puts the notes into the output as it is created: a TIFF's info cannot grow
    later without copying the file. Closing does what the serial run does, here: that copy when
    the guard replaced slices (its note comes last), the lower levels of an OME-Zarr pyramid."""

    def __init__(self, client: Client, source: Source, target: Path, model: Any, options: EnhanceOptions):
        self.client, self.model, self.options = client, model, options
        self.source, self.target = source, target
        self.layout: Layout
        self.layout, stacks = input_stacks(source.path, source.channel, source.timepoint)
        self.first = stacks[0][1]  # the output's shape, dtype, voxel size and info are the first's
        self.stacks = [
            (
                at,
                Source(
                    source.path,
                    at[1] if source.channel == "all" else source.channel,
                    at[0] if source.timepoint == "all" else source.timepoint,
                ),
            )
            for at, _ in stacks
        ]
        self.plans = [client.submit(_plan_task, s, model, options, pure=False) for _, s in self.stacks]
        self.tasks: list[Any] = []
        self.notes: list[str] = []
        self.writer: StackWriter | None = None

    def start(
        self, loaded: LoadedModel, force: bool, writers: contextlib.ExitStack, bar: tqdm
    ) -> FileOutcome | None:
        """Wait for the plans, create the output, send the stack tasks; the file's outcome if it
        failed already (a bad stack, an output that cannot be written)."""
        try:
            records = _wait(self.plans, bar)
            for (at, _), record in zip(self.stacks, records, strict=True):
                self.notes += [_where(at, self.layout) + note for note in record.notes]
            info = "\n".join(filter(None, [self.first.info, provenance(loaded, self.notes)]))
            writer = create_stack_writer(
                self.target,
                self.first.data.shape,
                self.first.data.dtype,
                self.options.voxel_size or self.first.voxel_size,
                force=force,
                protect=[self.source.path],
                info=info,
                layout=self.layout,
            )
        except DqlrError as error:
            return FileOutcome(self.source.path, [], str(error))
        self.writer = writers.enter_context(writer)
        array, axes = writer.shared_array(), writer.layout.axes
        self.tasks = [
            self.client.submit(_stack_task, s, r, self.model, self.options, array, axes, at, pure=False)
            for (at, s), r in zip(self.stacks, records, strict=True)
        ]
        return None

    def finish(self, bar: tqdm) -> FileOutcome:
        """Wait for the stack tasks, add their guard notes (in the serial run's order), rename."""
        assert self.writer is not None
        try:
            for (at, _), notes in zip(self.stacks, _wait(self.tasks, bar), strict=True):
                for note in notes:
                    self.notes.append(_where(at, self.layout) + note)
                    self.writer.add_info(f"note: {self.notes[-1]}")
            self.writer.close()
        except DqlrError as error:
            self.writer.abort()
            return FileOutcome(self.source.path, [], str(error))
        return FileOutcome(self.source.path, [self.target], notes=self.notes)


def _stack_task(
    source: Source,
    record: PlanRecord,
    model: LoadedModel,
    options: EnhanceOptions,
    array: Any,
    axes: str,
    at: tuple[int, int],
) -> list[str]:
    """One stack of a file of several, enhanced as the serial run does and written plane by plane
    into the shared output at its time point and channel (idempotent: a task run again after a
    lost worker writes the same values); returns its guard notes."""
    plan = record.plan(source.read().data)
    for z, enhanced, _ in enhanced_slices(plan, model, options):
        array[plane_index(axes, *at, z)] = denormalize(enhanced, plan.norm, array.dtype)
    return plan.guard_notes()


def _enhance_tiled(
    client: Client,
    source: Source,
    target: Path,
    shared: Any,
    loaded: LoadedModel,
    options: EnhanceOptions,
    force: bool,
    block: int,
    resume: bool,
    bar: tqdm,
) -> FileOutcome:
    """One large stack in XY blocks: plan (one task), blocks (written into a partial Zarr store),
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
        return _enhance_blocks(
            client, source, target, shared, loaded, record, options, force, block, resume, bar
        )
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
    resume: bool,
    bar: tqdm,
) -> FileOutcome:
    """The blocks of one stack into its partial store (`partial_path`), which holds, in RESUME,
    the fingerprint of what it is made from and a marker per finished block: with `resume` a
    matching store goes on from there and is kept when the run stops; otherwise it is removed."""
    stack = source.read()
    depth, height, width = (int(n) for n in stack.data.shape)
    shape = (depth, height, width)
    info = provenance(loaded, record.notes)
    partial = partial_path(target)
    fingerprint = _fingerprint(source, loaded, options, block, info)
    notes = _reuse_partial(partial, fingerprint, resume)
    writer = create_stack_writer(
        target,
        shape,
        stack.data.dtype,
        record.voxel_size,
        force=force,
        protect=[source.path],
        info=info,
        chunk=min(block, ZARR_CHUNK),
        tmp=partial,
    )
    marks = partial / RESUME
    try:
        marks.mkdir(exist_ok=True)
        write_text(marks / "fingerprint.json", fingerprint)
        array = writer.shared_array()
        windows = [
            (slice(y, min(y + block, shape[1])), slice(x, min(x + block, shape[2])))
            for y in range(0, shape[1], block)
            for x in range(0, shape[2], block)
        ]
        todo = [w for w in windows if not _marker(marks, w).exists()]
        if len(todo) < len(windows):
            notes.append(f"resumed: {len(windows) - len(todo)} of {len(windows)} blocks were done already")
        blocks = [
            client.submit(
                _block_task, source, record, shared, options, array, w, _marker(marks, w), pure=False
            )
            for w in todo
        ]
        _wait(blocks, bar)
        plan = record.plan(stack.data)
        if options.guard:
            plan.guarded = _guard(client, source, record.norm, array, depth, marks / "guarded.json", bar)
        for note in plan.guard_notes():
            writer.add_info(f"note: {note}")
        remove(marks)
        writer.close()
    except BaseException:
        if resume:
            writer.keep()  # the finished blocks stay for the next run with --resume
        else:
            writer.abort()
        raise
    return FileOutcome(source.path, [target], notes=notes + record.notes + plan.guard_notes())


def _fingerprint(source: Source, model: LoadedModel, options: EnhanceOptions, block: int, info: str) -> str:
    """What a tile-parallel output is made from (the input file or store: paths, sizes and
    modification times; the model's weights and config; the options that change values; the block;
    dqlr's version and the notes), as JSON: a partial store is resumed only when this matches."""
    path = source.path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamps = hashlib.sha256()
    for file in files:
        stat = file.stat()
        stamps.update(f"{file.relative_to(path.parent)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    weights = hashlib.sha256(model.config.model_dump_json().encode())
    for name, tensor in model.network.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().numpy().tobytes())
    made_of = {
        "input": str(path),
        "channel": source.channel,
        "timepoint": source.timepoint,
        "input files": stamps.hexdigest(),
        "model": weights.hexdigest(),
        "options": options.model_dump(mode="json", exclude={"device", "engine", "batch_size"}),
        "block": block,
        "provenance": info,
    }
    return json.dumps(made_of, indent=1, sort_keys=True)


def _reuse_partial(partial: Path, fingerprint: str, resume: bool) -> list[str]:
    """Keep an interrupted run's partial store only with `resume` and a matching fingerprint; else
    remove it. Returns a note when one made from something else is discarded."""
    if not os.path.lexists(partial):
        return []
    stamp = partial / RESUME / "fingerprint.json"
    if resume and stamp.is_file() and stamp.read_text(encoding="utf-8") == fingerprint:
        return []
    remove(partial)
    if not resume:
        return []
    return [
        f"discarded {partial.name}, the partial output of an earlier run made from another input, "
        "model or settings; started over"
    ]


def _marker(marks: Path, window: tuple[slice, slice]) -> Path:
    """The file that says a block is written (one per block: tasks never share a file)."""
    return marks / f"block-{window[0].start}-{window[1].start}"


def _guard(
    client: Client, source: Source, norm: Normalization, array: Any, depth: int, verdict: Path, bar: tqdm
) -> list[int]:
    """The guard on each written slice, then the replacement of those it rejects. The verdict is
    recorded before any slice is replaced, so a resumed run does not judge smoothed slices."""
    if verdict.is_file():
        guarded: list[int] = json.loads(verdict.read_text(encoding="utf-8"))
    else:
        judged = [client.submit(_judge_task, source, norm, array, z, pure=False) for z in range(depth)]
        guarded = [z for z, ok in enumerate(_wait(judged, bar)) if not ok]
        write_text(verdict, json.dumps(guarded))
    replaced = [client.submit(_replace_task, source, norm, array, z, pure=False) for z in guarded]
    _wait(replaced, bar)
    return guarded


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
    marker: Path,
) -> None:
    """One XY block down the whole stack, written straight into its own chunks of `array`, then
    its `marker` (idempotent: a task run again after a lost worker writes the same values)."""
    stack = source.read()
    plan = record.plan(stack.data)
    for z, enhanced, _ in enhanced_slices(plan, model, options, window=window):
        array[(z, *window)] = denormalize(enhanced, plan.norm, array.dtype)
    marker.touch()  # only now: every chunk of the block is written


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
