"""The models shipped in the package: they load, and they improve a simulated stack's deep slices."""

import numpy as np
import pytest

from dqlr.evaluation.metrics import psnr_affine
from dqlr.inference.enhance import enhance
from dqlr.model.checkpoint import load_model, shipped_model_path
from dqlr.simulation import simulate_plant


@pytest.fixture(scope="module")
def plant():
    # A plant the shipped models never saw (they were trained on seeds 100-103).
    return simulate_plant(shape=(24, 128, 128), seed=4242)


def _deep_third_psnr(result: np.ndarray, clean: np.ndarray) -> float:
    deep = range(2 * len(clean) // 3, len(clean))
    return float(np.mean([psnr_affine(result[z], clean[z]) for z in deep]))


def test_shipped_models_are_small_and_self_describing() -> None:
    for name in ("default", "paper", "noquant", "depth-aware"):
        path = shipped_model_path(name)
        assert path.stat().st_size < 5 * 1024 * 1024
        model = load_model(name)
        assert model.meta["normalization"]["per_stack"] is True
    assert load_model(None).config.model.quantize is True
    assert load_model(None).config.mode == "depth-aware"  # depth-aware won the benchmark
    assert load_model(None).network.condition is True
    assert load_model("noquant").config.model.quantize is False
    assert load_model("depth-aware").config.conditioned is True
    assert load_model("paper").network.condition is False
    assert load_model("paper").meta["mode"] == "paper"


def test_shipped_model_improves_the_deepest_third(plant) -> None:
    result = enhance(plant.observed, device="cpu")
    assert result.shape == plant.observed.shape and result.dtype == plant.observed.dtype
    before = _deep_third_psnr(plant.observed, plant.clean)
    after = _deep_third_psnr(result, plant.clean)
    assert after > before + 0.3, (before, after)


def test_demo_writes_its_picture(tmp_path, monkeypatch) -> None:
    import dqlr.demo as demo

    def small(seed: int = 0):
        return simulate_plant(shape=(6, 64, 64), seed=seed)

    monkeypatch.setattr(demo, "simulate_plant", small)
    picture = demo.run_demo(tmp_path, device="cpu")
    assert picture.stat().st_size > 10_000
    from dqlr.io import read_stack

    assert read_stack(tmp_path / "demo_enhanced.tif").data.shape == (6, 64, 64)
