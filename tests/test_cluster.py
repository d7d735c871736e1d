"""dqlr enhance on a 2-worker LocalCluster: equal to the serial run, tile-parallel blocks, a worker
killed mid-run, --resume, and the CLI's --scheduler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dqlr
from dqlr.cli import main
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError
from dqlr.inference import distributed
from dqlr.inference.enhance import enhance_files, iter_enhanced
from dqlr.io import read_stack, write_stack
from dqlr.model.checkpoint import load_model
from dqlr.normalize import fit_normalization
from dqlr.simulation import simulate_plant
from tests.conftest import save_tiny_model

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
    reads: list[tuple[int, ...]] = []

    class Recorded:  # an array that notes the shape of every read
        shape, dtype = stack.shape, stack.dtype

        def __getitem__(self, key):
            reads.append(np.asarray(stack[key]).shape)
            return stack[key]

    pieced = np.zeros_like(whole)
    for y in range(0, 100, 64):
        for x in range(0, 200, 64):
            window = (slice(y, min(y + 64, 100)), slice(x, min(x + 64, 200)))
            for z, (part, _, _) in enumerate(iter_enhanced(Recorded(), model, norm, options, window=window)):
                pieced[(z, *window)] = part
    assert np.allclose(pieced, whole, atol=1e-5)
    # a 64-px block reads at most its tiles' box (64 px and a 32-px tile each side), not the slice
    assert max(h * w for h, w in reads) <= (64 + 2 * 32) ** 2 < 100 * 200


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
    ("dtype", "sharp_end", "guard"), [("uint16", "auto", True), ("float32", "bottom", False)]
)
def test_a_wide_zarr_stack_in_blocks_equals_the_serial_run(
    model_file, client, tmp_path, dtype, sharp_end, guard
) -> None:
    data = simulate_plant(shape=(6, 70, 90), seed=5).observed.astype(dtype)
    source = write_stack(tmp_path / "wide.zarr", data, voxel_size=(1.0, 0.3, 0.3))
    options = EnhanceOptions(**SMALL_TILES, sharp_end=sharp_end, guard=guard)
    [serial] = enhance_files([source], tmp_path / "serial.zarr", model_file, options, progress=False)
    [outcome] = distributed.enhance_files(
        client, [source], tmp_path / "blocks.zarr", model_file, options, progress=False, block=32
    )
    assert outcome.error is None and outcome.notes == serial.notes
    result = read_stack(tmp_path / "blocks.zarr")
    _assert_equal_within_a_count(read_stack(tmp_path / "serial.zarr").data, result.data)
    assert result.voxel_size == pytest.approx((1.0, 0.3, 0.3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.zarr", "serial.zarr", "wide.zarr"]


def test_every_channel_on_the_cluster_equals_the_serial_run(model_file, client, tmp_path) -> None:
    """--channel all: the file's stacks share one output, so the file is one task (never blocks)."""
    import tifffile

    plant = simulate_plant(shape=(6, 40, 72), seed=6).observed
    channels = np.stack([plant, plant[:, ::-1]], axis=1)  # ZCYX; the second turned over in y
    source = tmp_path / "two.tif"
    tifffile.imwrite(source, channels, imagej=True, metadata={"axes": "ZCYX"})
    options = EnhanceOptions(**SMALL_TILES)
    [serial] = enhance_files(
        [source], tmp_path / "serial.zarr", model_file, options, channel="all", progress=False
    )
    [outcome] = distributed.enhance_files(
        client,
        [source],
        tmp_path / "cluster.zarr",
        model_file,
        options,
        channel="all",
        progress=False,
        block=32,
    )
    assert outcome.error is None and outcome.notes == serial.notes
    for c in (0, 1):
        expected = read_stack(tmp_path / "serial.zarr", channel=c).data
        _assert_equal_within_a_count(expected, read_stack(tmp_path / "cluster.zarr", channel=c).data)
    assert not np.array_equal(read_stack(tmp_path / "cluster.zarr", channel=0).data, plant)


def test_a_killed_worker_costs_nothing_but_time(model_file, client, tmp_path) -> None:
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
        while not (busy := [w for w, keys in client.processing().items() if keys]):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.05)
        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        outcomes = run.result(timeout=240)
    assert pid not in client.run(os.getpid).values()  # the worker was killed while it had a task
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
