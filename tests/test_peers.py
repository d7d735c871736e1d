"""Noise2Void from the real CAREamics, run through harness.peers in its own .venv-peers.

Building .venv-peers downloads packages (about 1.6 GB installed), so the tests that train run only
where it already exists or DQLR_TEST_PEERS=1 asks for it; the argument checks always run.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from harness.peers import WORKER, ensure_peers_env, noise2void, peers_env

from dqlr.errors import DqlrError
from dqlr.evaluation.metrics import psnr_affine
from dqlr.simulation import simulate_plant

needs_peers = pytest.mark.skipif(
    os.environ.get("DQLR_TEST_PEERS") != "1" and not peers_env().exists(),
    reason=f"{peers_env()} does not exist and creating it downloads CAREamics and torch; "
    "set DQLR_TEST_PEERS=1 to create it and run these tests",
)

FAST = {"patch_size": 32, "batch_size": 8, "threads": 1}  # one thread: the CI machine is shared


def _write(path: Path, data: np.ndarray) -> None:
    tifffile.imwrite(path, data, photometric="minisblack")  # 3 planes would otherwise mean RGB


def _mean_psnr(result: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([psnr_affine(r, ref) for r, ref in zip(result, reference, strict=True)]))


@needs_peers
def test_noise2void_denoises_a_simulated_stack(tmp_path: Path) -> None:
    plant = simulate_plant(shape=(6, 64, 64), seed=3)
    noise_free = simulate_plant(shape=(6, 64, 64), seed=3, noise=0).observed  # same tissue, no noise
    _write(tmp_path / "plant.tif", plant.observed)
    out = tmp_path / "out" / "plant_n2v.tif"

    record = noise2void(
        [tmp_path / "plant.tif"], None, [tmp_path / "plant.tif"], [out], tmp_path / "work", epochs=40, **FAST
    )

    result = tifffile.imread(out)
    assert result.shape == plant.observed.shape and result.dtype == np.float32
    assert np.isfinite(result).all()
    assert record["epochs"] == 40 and record["steps"] == 80  # 16 training patches, batch 8
    assert record["careamics_version"] == "0.3.5"
    assert record["train_seconds"] > 0 and record["predict_seconds"] > 0
    # N2V removes noise, not blur: judged against the noise-free stack it clearly gains, and it
    # also comes closer to the clean (undegraded) reference than the noisy input.
    assert _mean_psnr(result, noise_free) > _mean_psnr(plant.observed, noise_free) + 2.0
    assert _mean_psnr(result, plant.clean) > _mean_psnr(plant.observed, plant.clean)


@needs_peers
def test_noise2void_time_budget_validation_stack_and_any_slice_size(tmp_path: Path) -> None:
    _write(tmp_path / "train.tif", simulate_plant(shape=(6, 64, 64), seed=3).observed)
    _write(tmp_path / "val.tif", simulate_plant(shape=(3, 64, 64), seed=4).observed)
    rng = np.random.default_rng(0)
    small = rng.normal(250, 30, (3, 50, 70)).astype(np.float32)  # not a multiple of 4: padded
    large = rng.poisson(250, (2, 272, 264)).astype(np.uint16)  # over 256 x 256: tiled
    inputs = [tmp_path / "small.tif", tmp_path / "large.tif"]
    _write(inputs[0], small)
    _write(inputs[1], large)
    outputs = [tmp_path / "out" / "small.tif", tmp_path / "out" / "large.tif"]

    record = noise2void(
        [tmp_path / "train.tif"],
        tmp_path / "val.tif",
        inputs,
        outputs,
        tmp_path / "work",
        minutes=0.1,
        **FAST,
    )

    assert record["stopped_by_time"] and record["steps"] >= 1 and record["max_seconds"] == 6.0
    assert record["tiled"] == [False, True]
    for path, stack in zip(outputs, (small, large), strict=True):
        result = tifffile.imread(path)
        assert result.shape == stack.shape and result.dtype == np.float32
        assert np.isfinite(result).all()
        assert result.std() < stack.std()  # pure noise is smoothed


@needs_peers
def test_worker_failure_is_one_line_dqlr_error(tmp_path: Path) -> None:
    _write(tmp_path / "flat.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(DqlrError, match=r"Noise2Void failed .*expected a ZYX stack, got shape \(64, 64\)"):
        noise2void([tmp_path / "flat.tif"], None, [], [], tmp_path / "work", epochs=1)


def test_arguments_are_checked_before_anything_is_installed(tmp_path: Path) -> None:
    stack = tmp_path / "s.tif"
    _write(stack, np.zeros((3, 16, 16), np.uint16))
    cases = [
        ({"train_files": []}, "at least one training stack"),
        ({"outputs": []}, "1 inputs but 0 outputs"),
        ({"inputs": [tmp_path / "missing.tif"]}, "no such file"),
        ({"minutes": 0}, "minutes must be positive"),
        ({"epochs": -3}, "epochs must be positive"),
        ({"patch_size": 48}, "power of 2"),
        ({"threads": -1}, "threads must be"),
    ]
    for change, message in cases:
        args = {
            "train_files": [stack],
            "val_file": None,
            "inputs": [stack],
            "outputs": [tmp_path / "o.tif"],
            "work_dir": tmp_path / "work",
            "root": tmp_path,
            **change,
        }
        with pytest.raises(DqlrError, match=message):
            noise2void(**args)
    assert not peers_env(tmp_path).exists()


def test_env_creation_failure_is_one_line_dqlr_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DqlrError, match=r"cannot create \.venv-peers \(creating .*\): .*no-python"):
        ensure_peers_env(tmp_path, progress=False)


def test_worker_imports_only_careamics_numpy_tifffile_and_stdlib() -> None:
    allowed = {"careamics", "numpy", "tifffile", "torch", "torchvision", *sys.stdlib_module_names}
    tree = ast.parse(WORKER.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.split(".")[0] for name in names} <= allowed
