"""Classical baselines: they must keep shape and dtype, actually restore, and tune honestly."""

from __future__ import annotations

import numpy as np
import pytest
from harness.tuning import (
    RL_ITERATIONS,
    RL_SIGMAS,
    _rl_checkpoints,
    tune_gaussian_smoothing,
    tune_richardson_lucy,
)
from scipy import ndimage

from dqlr.errors import DqlrError
from dqlr.evaluation.baselines import _rl_plane, gaussian_psf, gaussian_smoothing, richardson_lucy
from dqlr.evaluation.metrics import per_slice, psnr_affine
from dqlr.simulation import SimulatedPlant, simulate_plant

SHAPE = (12, 64, 64)


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(shape=SHAPE, seed=3)


def _deep_psnr(result: np.ndarray, clean: np.ndarray) -> float:
    deep = np.array_split(np.arange(len(clean)), 3)[2]
    return float(per_slice(result[deep], clean[deep])["psnr"].mean())


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize(
    "baseline",
    [lambda s: richardson_lucy(s, 1.5, 5), lambda s: gaussian_smoothing(s, 1.0)],
    ids=["richardson_lucy", "gaussian_smoothing"],
)
def test_baselines_keep_shape_and_dtype(plant: SimulatedPlant, dtype: str, baseline) -> None:
    stack = plant.observed[:4].astype(dtype)
    out = baseline(stack)
    assert out.shape == stack.shape and out.dtype == np.dtype(dtype)
    assert np.isfinite(out.astype(np.float64)).all()
    # the intensity scale is kept: no normalised [0, 1] output
    assert abs(float(out.mean()) - float(stack.mean())) < 0.2 * float(stack.mean())


def test_psf_is_normalised_and_centred() -> None:
    psf = gaussian_psf(2.0)
    assert psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(psf.argmax(), psf.shape) == (psf.shape[0] // 2, psf.shape[1] // 2)


def test_richardson_lucy_restores_a_blurred_slice(plant: SimulatedPlant) -> None:
    rng = np.random.default_rng(0)
    sharp = plant.clean[6:9].astype(np.float64)
    blurred = ndimage.gaussian_filter(sharp, (0, 2.0, 2.0))
    noisy = blurred + rng.normal(0.0, 0.01 * float(np.ptp(blurred)), blurred.shape)
    restored = richardson_lucy(noisy.astype(np.float32), sigma_px=2.0, iterations=20)
    for z in range(3):
        assert psnr_affine(restored[z], sharp[z]) > psnr_affine(noisy[z], sharp[z]) + 1.0


def test_incremental_rl_matches_scikit_image() -> None:
    plane = np.random.default_rng(1).random((30, 40)).astype(np.float32)
    psf = gaussian_psf(1.5)
    steps = _rl_checkpoints(plane, psf, [3, 7])
    np.testing.assert_allclose(steps[3], _rl_plane(plane, psf, 3), rtol=1e-6)
    np.testing.assert_allclose(steps[7], _rl_plane(plane, psf, 7), rtol=1e-6)


def test_tune_richardson_lucy_picks_from_the_grid_and_beats_default(plant: SimulatedPlant) -> None:
    tuned = tune_richardson_lucy(plant.observed, plant.clean)
    assert tuned["sigma_px"] in RL_SIGMAS and tuned["iterations"] in RL_ITERATIONS
    assert len(tuned["table"]) == len(RL_SIGMAS) * len(RL_ITERATIONS)
    default = _deep_psnr(richardson_lucy(plant.observed), plant.clean)
    row = next(r for r in tuned["table"] if (r["sigma_px"], r["iterations"]) == (2.0, 20))
    assert row["psnr_deep"] == pytest.approx(default, abs=1e-6)  # tuning scores = the real baseline
    assert tuned["psnr_deep"] >= default
    assert tuned["psnr_deep"] == max(r["psnr_deep"] for r in tuned["table"])


def test_tune_gaussian_smoothing_picks_from_the_grid_and_beats_default(plant: SimulatedPlant) -> None:
    sigmas = (0.5, 1.0, 2.0)
    tuned = tune_gaussian_smoothing(plant.observed, plant.clean, sigmas=sigmas)
    assert tuned["sigma_px"] in sigmas
    default = _deep_psnr(gaussian_smoothing(plant.observed), plant.clean)
    assert tuned["psnr_deep"] >= default - 1e-9
    assert tuned["psnr_deep"] > tuned["input_psnr_deep"]


def test_bad_settings_are_one_line_errors(plant: SimulatedPlant) -> None:
    with pytest.raises(DqlrError):
        richardson_lucy(plant.observed[:3], sigma_px=0)
    with pytest.raises(DqlrError):
        richardson_lucy(plant.observed[:3], iterations=0)
    with pytest.raises(DqlrError):
        gaussian_smoothing(plant.observed[:3], sigma_px=-1)
    with pytest.raises(DqlrError):
        tune_richardson_lucy(plant.observed, plant.clean[:, :32])
