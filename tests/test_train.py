"""Training: the loss falls, a run folder is self-sufficient, the Trainer's state round-trips,
resume continues exactly and refuses options it would ignore, and global state is left alone."""

import numpy as np
import pytest
import torch

import dqlr
from dqlr.config import RunOptions, load_config
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from dqlr.normalize import fit_normalization
from dqlr.training.data import WindowSampler
from dqlr.training.run import train
from dqlr.training.trainer import Trainer
from tests.conftest import tiny_config

QUIET = RunOptions(progress=False, device="cpu")


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


def test_training_lowers_the_loss_and_writes_a_complete_run(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides(
        {"train.epochs": 4, "train.steps_per_epoch": 30, "train.learning_rate": 3e-3}
    )
    result = dqlr.train(tiny_plants[:1], tmp_path / "run", config, val_stack=tiny_plants[1], run=QUIET)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    assert load_config(tmp_path / "run" / "config.yaml") == config
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_psnr" in header and "val_perplexity" in header
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temp files left behind


def test_checkpoint_alone_is_enough_to_enhance(tiny_plants, tmp_path) -> None:
    train(tiny_plants[:1], tmp_path / "run", tiny_config(), run=QUIET)
    loaded = load_model(tmp_path / "run" / "best.pt")
    state = read_checkpoint(tmp_path / "run" / "best.pt")
    assert state["normalization"]["percentile_high"] == 99.8
    assert state["normalization"]["training_stacks"][0]["name"] == "array"
    assert loaded.config == tiny_config()
    assert "device" not in str(state["config"]) and "num_threads" not in str(state["config"])
    result = dqlr.enhance(tiny_plants[1], loaded)
    assert result.shape == tiny_plants[1].shape and result.dtype == tiny_plants[1].dtype


def test_a_file_run_records_file_names_not_paths(tiny_plants, tmp_path) -> None:
    path = dqlr.write_stack(tmp_path / "data" / "plant.tif", tiny_plants[0])
    train([path], tmp_path / "run", tiny_config().with_overrides({"train.epochs": 1}), run=QUIET)
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["normalization"]["training_stacks"][0]["name"] == "plant.tif"
    assert str(tmp_path) not in str({k: v for k, v in state.items() if k != "model"})


def _weights_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_trainer_state_round_trips_exactly(tiny_plants) -> None:
    config = tiny_config().with_overrides({"train.epochs": 3})
    straight = Trainer(config, tiny_plants[:1], tiny_plants[1], QUIET)
    straight.fit()
    first = Trainer(config, tiny_plants[:1], tiny_plants[1], QUIET)
    first.fit(max_epochs=1)
    state = first.state_dict()
    assert {"model", "optimizer", "scheduler", "sampler", "random", "epoch", "step"} <= set(state)
    second = Trainer(config, tiny_plants[:1], tiny_plants[1], QUIET)
    second.load_state_dict(state)
    assert second.epoch == 1 and second.step == first.step
    torch.manual_seed(123)  # the caller's random stream must not leak into the run
    second.fit()
    _weights_equal(straight.network.state_dict(), second.network.state_dict())
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in second.history]


def test_training_leaves_global_torch_state_alone(tiny_plants) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    config = tiny_config().with_overrides({"train.epochs": 1})
    Trainer(config, tiny_plants[:1], tiny_plants[1], RunOptions(progress=False, num_threads=1)).fit()
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    assert torch.get_num_threads() == threads
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0  # denormals are not flushed after the run


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_plants, tmp_path) -> None:
    config = tiny_config()
    straight = train(tiny_plants[:1], tmp_path / "a", config, val_stack=tiny_plants[1], run=QUIET)
    train(tiny_plants[:1], tmp_path / "b", config, val_stack=tiny_plants[1], run=QUIET, stop_after_epochs=1)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(tiny_plants[:1], tmp_path / "b", val_stack=tiny_plants[1], resume=True, run=QUIET)
    _weights_equal(read_checkpoint(straight.last)["model"], read_checkpoint(resumed.last)["model"])
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_resume_refuses_a_changed_config(tiny_plants, tmp_path) -> None:
    config = tiny_config()
    train(tiny_plants[:1], tmp_path / "run", config, run=QUIET, stop_after_epochs=1)
    changed = config.with_overrides({"train.epochs": 5})
    with pytest.raises(DqlrError, match="saved config"):
        train(tiny_plants[:1], tmp_path / "run", changed, resume=True, run=QUIET)
    # the same config (or none) is accepted
    result = train(tiny_plants[:1], tmp_path / "run", config, resume=True, run=QUIET)
    assert result.history[-1]["epoch"] == config.train.epochs


def test_ablation_trains_without_quantizer(tiny_plants, tmp_path) -> None:
    result = train(tiny_plants[:1], tmp_path / "run", tiny_config(quantize=False), run=QUIET)
    state = read_checkpoint(result.last)
    assert not any("quantizer" in k for k in state["model"])
    assert "val_perplexity" not in result.history[-1]


def test_existing_run_needs_resume(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 1})
    train(tiny_plants[:1], tmp_path / "run", config, run=QUIET)
    with pytest.raises(DqlrError, match="--resume"):
        train(tiny_plants[:1], tmp_path / "run", config, run=QUIET)
    with pytest.raises(DqlrError, match="nothing to resume"):
        train(tiny_plants[:1], tmp_path / "other", resume=True, run=QUIET)


def test_resume_refuses_other_training_stacks(tiny_plants, tmp_path) -> None:
    config = tiny_config()
    first = dqlr.write_stack(tmp_path / "first.tif", tiny_plants[0])
    other = dqlr.write_stack(tmp_path / "other.tif", tiny_plants[1])
    train([first], tmp_path / "run", config, val_stack=other, run=QUIET, stop_after_epochs=1)
    with pytest.raises(DqlrError, match=r"training stacks \(first\.tif\); given other\.tif"):
        train([other], tmp_path / "run", val_stack=first, resume=True, run=QUIET)


def test_depth_aware_trainer_state_round_trips_through_a_checkpoint_file(tmp_path) -> None:
    """Pairs draw from the sampler's generator; the saved state must carry that exactly too."""
    plants = [dqlr.simulate(shape=(20, 96, 96), seed=s).observed for s in (31, 32)]
    config = tiny_config().with_overrides({"mode": "depth-aware", "train.epochs": 2})
    straight = Trainer(config, plants[:1], plants[1], QUIET)
    straight.fit()
    first = Trainer(config, plants[:1], plants[1], QUIET)
    first.fit(max_epochs=1)
    state = first.state_dict()
    save_checkpoint(
        tmp_path / "s.pt", {"config": config.to_dict(), "model": state.pop("model"), "trainer": state}
    )
    saved = read_checkpoint(tmp_path / "s.pt")  # weights_only=True on the way back
    second = Trainer(config, plants[:1], plants[1], QUIET)
    second.load_state_dict({**saved["trainer"], "model": saved["model"]})
    second.fit()
    _weights_equal(straight.network.state_dict(), second.network.state_dict())
