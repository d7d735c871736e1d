"""Checks of a user's stack before any model work: bad input first, the sharp end, the pixel size,
and a default path that runs on stacks the simulator did not make."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import resize

import dqlr
from dqlr.cli import main
from dqlr.inference.checks import assess, depth_trend, sharpness_profile


def wall_grid(depth: int = 12, size: int = 96, seed: int = 0) -> np.ndarray:
    """A dense regular wall grid that blurs and dims with depth, with Poisson noise: not ours."""
    rng = np.random.default_rng(seed)
    planes = []
    for z in range(depth):
        walls = np.zeros((size, size))
        walls[::8, :] = walls[:, ::8] = 1.0
        planes.append(rng.poisson(ndimage.gaussian_filter(walls, 0.7 + 0.25 * z) * (1 - 0.05 * z) * 400 + 50))
    return np.array(planes, np.uint16)


@pytest.fixture(scope="module")
def plant() -> np.ndarray:
    return dqlr.simulate(shape=(24, 128, 128), seed=3).observed


def test_the_sharp_end_is_found_either_way(plant) -> None:
    for stack in (plant, wall_grid()):
        assert depth_trend(*sharpness_profile(stack)) < 0
        assert not assess(stack).flip
        turned = assess(stack[::-1])
        assert turned.flip and any("sharp end of this stack is the bottom" in n for n in turned.notes)
    assert not assess(plant, sharp_end="top").flip and assess(plant, sharp_end="bottom").flip


def test_a_bottom_up_stack_is_enhanced_as_the_top_down_one(plant) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        turned = dqlr.enhance(plant[::-1].copy(), "paper", device="cpu")
    assert any("bottom" in str(w.message) for w in caught)
    straight = dqlr.enhance(plant, "paper", device="cpu")
    assert np.array_equal(turned, straight[::-1])
    plain = dqlr.enhance(plant[::-1].copy(), "paper", device="cpu", sharp_end="top")
    assert not np.array_equal(plain, turned)  # the orientation does matter to the model


def test_a_finer_pixel_size_is_resampled_to_the_models_and_back(plant) -> None:
    fine = resize(plant.astype(np.float32), (24, 256, 256), order=1, preserve_range=True).astype(np.uint16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dqlr.enhance(fine, "paper", device="cpu", voxel_size=(1.0, 0.125, 0.125))
    assert result.shape == fine.shape and result.dtype == fine.dtype
    assert any("resampled to 0.25 µm" in str(w.message) for w in caught)
    at_model_size = dqlr.enhance(plant, "paper", device="cpu", voxel_size=(1.0, 0.25, 0.25))
    expected = resize(at_model_size.astype(np.float32), (24, 256, 256), order=1, preserve_range=True)
    deep = slice(16, 24)
    assert np.corrcoef(result[deep].ravel(), expected[deep].ravel())[0, 1] > 0.97
    unmatched = dqlr.enhance(
        fine, "paper", device="cpu", voxel_size=(1.0, 0.125, 0.125), match_pixel_size=False
    )
    assert (
        np.corrcoef(unmatched[deep].ravel(), expected[deep].ravel())[0, 1]
        < np.corrcoef(result[deep].ravel(), expected[deep].ravel())[0, 1]
    )


@pytest.mark.parametrize("kind", ["uint16", "flipped", "float32", "small"])
def test_the_default_path_runs_on_stacks_the_simulator_did_not_make(
    kind: str, tmp_path: Path, capsys
) -> None:
    stack = {"uint16": wall_grid(), "flipped": wall_grid()[::-1], "small": wall_grid(8, 64)}.get(kind)
    if kind == "float32":
        stack = wall_grid().astype(np.float32) / 7.0
    path = dqlr.write_stack(tmp_path / "grid.tif", np.ascontiguousarray(stack))
    assert main(["enhance", str(path), "-o", str(tmp_path / "out.tif"), "--device", "cpu"]) == 0
    out = dqlr.read_stack(tmp_path / "out.tif").data
    assert out.shape == stack.shape and out.dtype == stack.dtype and np.isfinite(out).all()
    assert main(["estimate", str(path)]) == 0


def test_bad_input_is_refused_before_any_model_work(tmp_path: Path, capsys) -> None:
    """NaN in a float stack used to crash inside the depth estimate with a traceback."""
    stack = wall_grid().astype(np.float32)
    stack[7, 3, 4] = np.nan
    path = dqlr.write_stack(tmp_path / "nan.tif", stack)
    capsys.readouterr()
    assert main(["enhance", str(path), "-o", str(tmp_path / "out.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "nan.tif" in err and "NaN" in err and "slice 7" in err and "replace them" in err
    assert main(["estimate", str(path)]) == 2
    assert "NaN" in capsys.readouterr().err
    for bad, expected in (
        (np.zeros((2, 32, 32), np.uint16), "needs at least 3"),
        (np.zeros((5, 8, 32), np.uint16), "too small"),
    ):
        with pytest.raises(dqlr.DqlrError, match=expected):
            dqlr.enhance(bad)


def test_a_batch_with_a_bad_file_reports_and_exits_1(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    dqlr.write_stack(folder / "good.tif", wall_grid(8, 64))
    bad = wall_grid(8, 64).astype(np.float32)
    bad[2, 0, 0] = np.inf
    dqlr.write_stack(folder / "bad.tif", bad)
    assert main(["enhance", str(folder), "-o", str(tmp_path / "out"), "--mode", "paper"]) == 1
    captured = capsys.readouterr()
    assert "enhanced 1 of 2 stack(s)" in captured.out and "bad.tif" in captured.err
