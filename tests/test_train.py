import numpy as np
import pytest
import torch

from dqlr.checkpoint import load_model, read_checkpoint
from dqlr.config import load_config
from dqlr.data import WindowSampler
from dqlr.errors import DqlrError
from dqlr.normalize import fit_normalization
from dqlr.train import train
from tests.conftest import tiny_config


def test_sampler_windows_are_consecutive_and_never_flip_z() -> None:
    depth = 12
    stack = np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None], (depth, 20, 20))
    norm = fit_normalization(np.arange(depth, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4)))
    sampler = WindowSampler([stack], [norm], targets=3, crop=16, augment=True, seed=1)
    windows, tops = sampler.sample(64)
    assert windows.shape == (64, 4, 16, 16)
    levels = windows[:, :, 0, 0]
    steps = levels[:, 2:] - levels[:, 1:-1]  # targets increase by one slice each, top to bottom
    assert torch.allclose(steps, steps[:1, :1].expand_as(steps))
    assert float(steps[0, 0]) > 0
    assert bool(tops.any()) and not bool(tops.all())


def test_training_lowers_the_loss(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides(
        {"train.epochs": 4, "train.steps_per_epoch": 30, "train.learning_rate": 3e-3}
    )
    result = train(tiny_plants[:1], tmp_path / "run", config, val_stack=tiny_plants[1], progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    assert load_config(tmp_path / "run" / "config.yaml") == config
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_psnr" in header and "val_perplexity" in header


def test_checkpoint_alone_is_enough_to_enhance(tiny_plants, tmp_path) -> None:
    train(tiny_plants[:1], tmp_path / "run", tiny_config(), progress=False)
    loaded = load_model(tmp_path / "run" / "best.pt")
    state = read_checkpoint(tmp_path / "run" / "best.pt")
    assert state["normalization"]["percentile_high"] == 99.8
    assert loaded.config == tiny_config()
    enhanced, _ = loaded.network.enhance_pair(torch.rand(1, 1, 20, 28), None)
    assert enhanced.shape == (1, 1, 20, 28)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_plants, tmp_path) -> None:
    config = tiny_config()
    straight = train(tiny_plants[:1], tmp_path / "a", config, val_stack=tiny_plants[1], progress=False)
    train(
        tiny_plants[:1], tmp_path / "b", config, val_stack=tiny_plants[1], progress=False, stop_after_epochs=1
    )
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(tiny_plants[:1], tmp_path / "b", val_stack=tiny_plants[1], resume=True, progress=False)
    a = read_checkpoint(straight.last)["model"]
    b = read_checkpoint(resumed.last)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_ablation_trains_without_quantizer(tiny_plants, tmp_path) -> None:
    result = train(tiny_plants[:1], tmp_path / "run", tiny_config(quantize=False), progress=False)
    state = read_checkpoint(result.last)
    assert not any("quantizer" in k for k in state["model"])
    assert "val_perplexity" not in result.history[-1]


def test_existing_run_needs_resume(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 1})
    train(tiny_plants[:1], tmp_path / "run", config, progress=False)
    with pytest.raises(DqlrError, match="--resume"):
        train(tiny_plants[:1], tmp_path / "run", config, progress=False)
    with pytest.raises(DqlrError, match="nothing to resume"):
        train(tiny_plants[:1], tmp_path / "other", resume=True, progress=False)


def test_wrong_model_file_is_refused(tmp_path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DqlrError, match="not a dqlr model file"):
        load_model(bogus)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(DqlrError, match="not a dqlr model file"):
        load_model(tmp_path / "other.pt")
