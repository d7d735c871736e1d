"""dqlr enhance on a 2-worker LocalCluster: equal to the serial run, tile-parallel blocks, the
stacks of a file as tasks of their own, a worker killed mid-run, --resume (of whole outputs and of
the blocks of an interrupted tile-parallel run), and the CLI's --scheduler."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dqlr
from dqlr.cli import main
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError
from dqlr.inference import distributed
from dqlr.inference.enhance import enhance_files, iter_enhanced
from dqlr.io import Layout, StackWriter, plane_index, read_stack, write_stack
from dqlr.model.checkpoint import load_model
from dqlr.normalize import fit_normalization
from dqlr.simulation import simulate_plant
from tests.conftest import RecordedReads, save_tiny_model

SMALL_TILES = {"tile": 32, "overlap": 8}  # several tiles per slice, so blocks have real halos


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def client():
    with distributed.open_client("local:2") as client:
        yield client


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated uint16 stacks and one the simulator did not make: turned over in z, float32,
    another voxel size."""
    root = tmp_path_factory.mktemp("stacks")
    for seed in (1, 2):
        write_stack(root / f"plant{seed}.tif", simulate_plant(shape=(8, 64, 80), seed=seed).observed)
    other = simulate_plant(shape=(8, 72, 64), seed=3).observed[::-1].astype(np.float32) / 7.0
    write_stack(root / "other.tif", other, voxel_size=(2.0, 0.4, 0.4))
    return root


def _stacks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_stack(p).data for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _assert_equal_within_a_count(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype.kind == "f":
        assert np.allclose(a, b, rtol=0, atol=1e-4 * float(np.ptp(a)))
    else:
        assert int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) <= 1


def test_a_window_equals_that_part_of_the_whole_slice_and_reads_only_its_box(model_file) -> None:
    model = load_model(model_file)
    stack = simulate_plant(shape=(3, 100, 200), seed=4).observed
    norm, options = fit_normalization(stack), EnhanceOptions(**SMALL_TILES)
    whole = np.stack([s for s, _, _ in iter_enhanced(stack, model, norm, options)])
    recorded = RecordedReads(stack)
    pieced = np.zeros_like(whole)
    for y in range(0, 100, 64):
        for x in range(0, 200, 64):
            window = (slice(y, min(y + 64, 100)), slice(x, min(x + 64, 200)))
            for z, (part, _, _) in enumerate(iter_enhanced(recorded, model, norm, options, window=window)):
                pieced[(z, *window)] = part
    assert np.allclose(pieced, whole, atol=1e-5)
    # a 64-px block reads at most its tiles' box (64 px and a 32-px tile each side), not the slice
    assert max(h * w for h, w in recorded.reads) <= (64 + 2 * 32) ** 2 < 100 * 200


def test_files_on_the_cluster_equal_the_serial_run(model_file, client, folder, tmp_path) -> None:
    serial = enhance_files([folder], tmp_path / "serial", model_file, progress=False)
    outcomes = dqlr.enhance_files([folder], tmp_path / "cluster", model_file, progress=False, client=client)
    assert [o.error for o in outcomes] == [None] * 3
    assert [o.notes for o in outcomes] == [o.notes for o in serial]
    expected, got = _stacks(tmp_path / "serial"), _stacks(tmp_path / "cluster")
    assert sorted(got) == ["other.tif", "plant1.tif", "plant2.tif"]
    for name in expected:
        _assert_equal_within_a_count(expected[name], got[name])
    assert read_stack(tmp_path / "cluster" / "other.tif").voxel_size == pytest.approx((2.0, 0.4, 0.4))


@pytest.mark.parametrize(
    ("dtype", "sharp_end", "guard", "both_directions"),
    [("uint16", "auto", True, False), ("float32", "bottom", False, True)],
)
def test_a_wide_zarr_stack_in_blocks_equals_the_serial_run(
    model_file, client, tmp_path, dtype, sharp_end, guard, both_directions
) -> None:
    data = simulate_plant(shape=(6, 70, 90), seed=5).observed.astype(dtype)
    source = write_stack(tmp_path / "wide.zarr", data, voxel_size=(1.0, 0.3, 0.3))
    options = EnhanceOptions(**SMALL_TILES, sharp_end=sharp_end, guard=guard, both_directions=both_directions)
    [serial] = enhance_files([source], tmp_path / "serial.zarr", model_file, options, progress=False)
    [outcome] = distributed.enhance_files(
        client, [source], tmp_path / "blocks.zarr", model_file, options, progress=False, block=32
    )
    assert outcome.error is None and outcome.notes == serial.notes
    result = read_stack(tmp_path / "blocks.zarr")
    _assert_equal_within_a_count(read_stack(tmp_path / "serial.zarr").data, result.data)
    assert result.voxel_size == pytest.approx((1.0, 0.3, 0.3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.zarr", "serial.zarr", "wide.zarr"]


def _ran(stream: Any, task: str) -> int:
    """How many runs of the task function named `task` a distributed.get_task_stream recorded."""
    return sum(str(record["key"]).startswith(f"{task}-") for record in stream.data)


@pytest.mark.parametrize(("name", "guard"), [("cluster.zarr", True), ("cluster.tif", False)])
def test_every_channel_and_time_point_is_a_task_of_its_own(model_file, client, tmp_path, name, guard) -> None:
    """--channel all --timepoint all: one plan and one enhancement task per stack, all writing
    into one shared output (Zarr chunks, or planes written in place in the TIFF), equal to the serial
    run, notes and info included (with the guard, which replaces the untrained model's slices: its
    notes come last; without it: the network's values)."""
    import tifffile
    from distributed import get_task_stream

    # 10 slices: enough for the checks to have a note on each stack
    plants = [simulate_plant(shape=(10, 40, 72), seed=seed).observed.astype(np.float32) for seed in (6, 7)]
    # TZCYX, float32: the second channel turned over in z (sharp end at the bottom)
    series = np.stack([np.stack([p, p[::-1] / 3.0], axis=1) for p in plants])
    source = tmp_path / "series.tif"
    tifffile.imwrite(source, series, imagej=True, metadata={"axes": "TZCYX"})
    options = EnhanceOptions(**SMALL_TILES, guard=guard)
    picks = {"channel": "all", "timepoint": "all"}
    serial_path = tmp_path / name.replace("cluster", "serial")
    [serial] = enhance_files([source], serial_path, model_file, options, **picks, progress=False)
    with get_task_stream(client) as stream:
        [outcome] = distributed.enhance_files(
            client, [source], tmp_path / name, model_file, options, **picks, progress=False
        )
    assert outcome.error is None and outcome.notes == serial.notes
    assert any(note.startswith("channel 1, time point 1: ") for note in outcome.notes)
    assert (_ran(stream, "_stack_task"), _ran(stream, "_plan_task"), _ran(stream, "_file_task")) == (4, 4, 0)
    for t in (0, 1):
        for c in (0, 1):
            expected = read_stack(serial_path, channel=c, timepoint=t).data
            got = read_stack(tmp_path / name, channel=c, timepoint=t).data
            _assert_equal_within_a_count(expected, got)
    info = read_stack(tmp_path / name, channel=0, timepoint=0).info
    assert info == read_stack(serial_path, channel=0, timepoint=0).info
    assert info is not None and all(note in info for note in outcome.notes)
    assert not np.array_equal(read_stack(tmp_path / name, channel=1, timepoint=1).data, series[1, :, 1])
    assert sorted(os.listdir(tmp_path)) == sorted([name, serial_path.name, "series.tif"])


@pytest.mark.parametrize(("name", "axes"), [("a.tif", "TCZYX"), ("a.ome.tif", "CTZYX"), ("a.zarr", "TCZYX")])
def test_a_shared_output_takes_planes_from_other_processes_where_the_writer_puts_them(
    tmp_path, name, axes
) -> None:
    """shared_array's planes (pickled, as a task gets them) land where writer[t, c, z] puts them:
    ImageJ reorders to TZCYX, OME-TIFF keeps the input's order."""
    shape = {"T": 2, "C": 3, "Z": 4, "Y": 5, "X": 6}
    layout = Layout(axes, tuple(shape[a] for a in axes))
    stacks = np.random.default_rng(0).random((2, 3, 4, 5, 6)).astype(np.float32)
    with StackWriter(tmp_path / f"direct.{name}", (4, 5, 6), np.float32, layout=layout) as writer:
        for t, c, z in np.ndindex(2, 3, 4):
            writer[t, c, z] = stacks[t, c, z]
    with StackWriter(tmp_path / name, (4, 5, 6), np.float32, layout=layout) as writer:
        array = pickle.loads(pickle.dumps(writer.shared_array()))
        for t, c, z in np.ndindex(2, 3, 4):
            array[plane_index(writer.layout.axes, t, c, z)] = stacks[t, c, z]
    for t, c in np.ndindex(2, 3):
        got = read_stack(tmp_path / name, channel=c, timepoint=t).data
        assert np.array_equal(got, stacks[t, c])
        assert np.array_equal(got, read_stack(tmp_path / f"direct.{name}", channel=c, timepoint=t).data)


def _block_failing(flag: Path, original: Callable[..., Any], *args: Any) -> Any:
    """A block task whose block at (32, 32) fails while `flag` exists (a run stopped midway; the
    worker processes see the flag too)."""
    window = args[5]
    if flag.exists() and (window[0].start, window[1].start) == (32, 32):
        raise RuntimeError("run interrupted")
    return original(*args)


def _replace_failing(flag: Path, original: Callable[..., Any], *args: Any) -> Any:
    """A guard's replacement task that fails for slice 3 while `flag` exists."""
    if flag.exists() and args[-1] == 3:
        raise RuntimeError("run interrupted")
    return original(*args)


def _interrupt(monkeypatch: pytest.MonkeyPatch, task: str, failing: Callable[..., Any], flag: Path) -> None:
    flag.touch()
    monkeypatch.setattr(distributed, task, functools.partial(failing, flag, getattr(distributed, task)))


def _wide_stack(tmp_path: Path) -> Path:
    return write_stack(tmp_path / "wide.zarr", simulate_plant(shape=(6, 70, 90), seed=5).observed)


def _chunk_times(store: Path) -> dict[str, int]:
    """The modification times of level 0's chunk files (Z/Y/X)."""
    chunks = (p for p in (store / "0").rglob("*") if p.is_file() and p.name.isdigit())
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in chunks}


def test_an_interrupted_tiled_run_resumes_from_its_finished_blocks(
    model_file, client, tmp_path, monkeypatch
) -> None:
    from distributed import get_task_stream

    source, target = _wide_stack(tmp_path), tmp_path / "blocks.zarr"
    options = EnhanceOptions(**SMALL_TILES, guard=False)  # the guard would rewrite every chunk
    [serial] = enhance_files([source], tmp_path / "serial.zarr", model_file, options, progress=False)
    flag = tmp_path / "interrupt"
    _interrupt(monkeypatch, "_block_task", _block_failing, flag)
    run = functools.partial(
        distributed.enhance_files, client, [source], target, model_file, options, progress=False, block=32
    )
    with pytest.raises(RuntimeError, match="run interrupted"):
        run(resume=True)
    partial = tmp_path / ".blocks.zarr.partial"
    assert not target.exists()
    assert sorted(p.name for p in (partial / "dqlr-resume").iterdir()) == sorted(
        [f"block-{y}-{x}" for y in (0, 32, 64) for x in (0, 32, 64) if (y, x) != (32, 32)]
        + ["fingerprint.json"]
    )
    done = {k: t for k, t in _chunk_times(partial).items() if not k.endswith("/1/1")}  # chunk (z, 1, 1)
    assert len(done) == 6 * 8
    flag.unlink()
    monkeypatch.undo()
    with get_task_stream(client) as stream:
        [outcome] = run(resume=True)
    assert _ran(stream, "_block_task") == 1  # only the block the first run did not finish
    assert outcome.error is None
    assert outcome.notes == ["resumed: 8 of 9 blocks were done already", *serial.notes]
    assert {k: t for k, t in _chunk_times(target).items() if k in done} == done  # not written again
    _assert_equal_within_a_count(read_stack(tmp_path / "serial.zarr").data, read_stack(target).data)
    assert sorted(os.listdir(tmp_path)) == ["blocks.zarr", "serial.zarr", "wide.zarr"]  # no partial store
    assert not (target / "dqlr-resume").exists()


def test_resume_discards_a_partial_store_made_with_other_settings(
    model_file, client, tmp_path, monkeypatch
) -> None:
    from distributed import get_task_stream

    source, target = _wide_stack(tmp_path), tmp_path / "blocks.zarr"
    partial = tmp_path / ".blocks.zarr.partial"
    options = EnhanceOptions(**SMALL_TILES, guard=False)
    flag = tmp_path / "interrupt"
    _interrupt(monkeypatch, "_block_task", _block_failing, flag)
    run = functools.partial(
        distributed.enhance_files, client, [source], target, model_file, progress=False, block=32
    )
    with pytest.raises(RuntimeError, match="run interrupted"):
        run(options=options, resume=False)
    assert not partial.exists()  # without resume a stopped run leaves nothing
    with pytest.raises(RuntimeError, match="run interrupted"):
        run(options=options, resume=True)
    assert len(list((partial / "dqlr-resume").glob("block-*"))) == 8
    flag.unlink()
    monkeypatch.undo()
    with get_task_stream(client) as stream:
        [outcome] = run(options=EnhanceOptions(**SMALL_TILES, guard=True), resume=True)
    assert _ran(stream, "_block_task") == 9
    assert outcome.error is None
    assert outcome.notes[0] == (
        "discarded .blocks.zarr.partial, the partial output of an earlier run made from another input, "
        "model or settings; started over"
    )
    assert not partial.exists() and read_stack(target).shape == (6, 70, 90)


def test_a_resumed_run_keeps_the_guards_verdict(model_file, client, tmp_path, monkeypatch) -> None:
    """Stopped while the guard replaced slices: the resumed run replaces the rest without judging
    the smoothed slices again, so its notes are the serial run's."""
    from distributed import get_task_stream

    source, target = _wide_stack(tmp_path), tmp_path / "blocks.zarr"
    options = EnhanceOptions(**SMALL_TILES)
    [serial] = enhance_files([source], tmp_path / "serial.zarr", model_file, options, progress=False)
    assert serial.notes and "of 6 slices" in serial.notes[-1]  # the untrained model needs the guard
    flag = tmp_path / "interrupt"
    _interrupt(monkeypatch, "_replace_task", _replace_failing, flag)
    run = functools.partial(
        distributed.enhance_files, client, [source], target, model_file, options, progress=False, block=32
    )
    with pytest.raises(RuntimeError, match="run interrupted"):
        run(resume=True)
    assert (tmp_path / ".blocks.zarr.partial" / "dqlr-resume" / "guarded.json").is_file()
    flag.unlink()
    monkeypatch.undo()
    with get_task_stream(client) as stream:
        [outcome] = run(resume=True)
    assert (_ran(stream, "_block_task"), _ran(stream, "_judge_task")) == (0, 0)
    assert outcome.notes == ["resumed: 9 of 9 blocks were done already", *serial.notes]
    _assert_equal_within_a_count(read_stack(tmp_path / "serial.zarr").data, read_stack(target).data)
    assert sorted(os.listdir(tmp_path)) == ["blocks.zarr", "serial.zarr", "wide.zarr"]


def test_killed_workers_cost_nothing_but_time(model_file, client, tmp_path) -> None:
    """Every worker is killed while a task runs (as a nanny restarts one that outgrows its memory):
    the restarted workers run the lost tasks again, the model included, and every output is whole."""
    inputs = tmp_path / "in"
    for seed in range(4):
        write_stack(inputs / f"p{seed}.tif", simulate_plant(shape=(10, 96, 112), seed=seed).observed)
    enhance_files([inputs], tmp_path / "serial", model_file, progress=False)
    serial = _stacks(tmp_path / "serial")
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            enhance_files, [inputs], tmp_path / "out", model_file, progress=False, client=client
        )
        deadline = time.monotonic() + 60
        while not any(client.processing().values()):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.05)
        pids = list(client.run(os.getpid).values())
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        outcomes = run.result(timeout=240)
    assert not set(pids) & set(client.run(os.getpid).values())  # killed while they had tasks
    assert [o.error for o in outcomes] == [None] * 4
    got = _stacks(tmp_path / "out")
    assert sorted(got) == sorted(serial)  # every output, and no temporary file left behind
    for name in serial:
        _assert_equal_within_a_count(serial[name], got[name])
    assert sorted(os.listdir(tmp_path / "out")) == sorted(serial)


def test_resume_skips_complete_outputs_and_redoes_the_rest(model_file, client, folder, tmp_path) -> None:
    out = tmp_path / "out"
    enhance_files([folder / "plant1.tif"], out / "plant1.tif", model_file, progress=False)
    (out / ".plant2.tif.tmp-0badc0de").write_bytes(b"half a file from an interrupted run")
    before = (out / "plant1.tif").stat().st_mtime_ns
    refused = ["enhance", str(folder / "plant1.tif"), "-o", str(out / "plant1.tif"), "--model", model_file]
    assert main(refused) == 2  # exists: refused without --resume
    [skipped] = enhance_files([folder / "plant1.tif"], out / "plant1.tif", model_file, resume=True)
    assert skipped.skipped and skipped.outputs == [out / "plant1.tif"]
    code = main(
        ["enhance", str(folder), "-o", str(out), "--model", model_file, "--resume"]
        + ["--scheduler", client.scheduler.address]
    )
    assert code == 0
    assert (out / "plant1.tif").stat().st_mtime_ns == before
    assert sorted(os.listdir(out)) == ["other.tif", "plant1.tif", "plant2.tif"]
    expected = enhance_files([folder / "plant2.tif"], tmp_path / "plant2.tif", model_file, progress=False)
    _assert_equal_within_a_count(read_stack(expected[0].outputs[0]).data, read_stack(out / "plant2.tif").data)


def test_bad_scheduler_is_one_line(capsys, folder, tmp_path) -> None:
    with pytest.raises(DqlrError, match="at least one worker"), distributed.open_client("local:0"):
        pass
    assert main(["enhance", str(folder), "-o", str(tmp_path / "o"), "--scheduler", "local:two"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dqlr: error: --scheduler local:two: write local:N (N worker processes) or an address"
    ]


def test_dask_is_imported_only_for_a_cluster() -> None:
    code = (
        "import sys\nfrom dqlr.cli import build_parser\nimport dqlr.inference.enhance\n"
        "build_parser()\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
