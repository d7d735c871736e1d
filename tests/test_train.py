"""Training: the loss falls, a run folder is self-sufficient, the Trainer's state round-trips,
resume continues exactly and refuses options it would ignore, and global state is left alone.
A run can start from a model (--init), stops on a time budget and on Ctrl-C with its files whole."""

import numpy as np
import pytest
import torch

import dqlr
from dqlr.config import RunOptions, load_config
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import build_network, load_model, read_checkpoint, save_checkpoint
from dqlr.normalize import fit_normalization
from dqlr.reporting.figures import CurvePlotter
from dqlr.training.batches import Batch
from dqlr.training.data import WindowSampler
from dqlr.training.run import train
from dqlr.training.trainer import Callback, Trainer, held_out_split
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


# -- starting from a model, time budget, Ctrl-C --------------------------------------------------


def save_tiny_model(path, config, seed: int = 5):
    """A model file with weights unlike those a run seeded with config.train.seed would draw."""
    torch.manual_seed(seed)
    network = build_network(config)
    save_checkpoint(path, {"config": config.to_dict(), "model": network.state_dict()})
    return load_model(path)


class WeightsAtStart(Callback):
    def on_start(self, trainer: Trainer) -> None:
        self.weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}


def _not_quantizer(state: dict) -> dict:
    """The EMA codebook moves without the optimiser; everything else follows the learning rate."""
    return {k: v for k, v in state.items() if not k.startswith("quantizer.")}


def test_init_starts_from_exactly_the_init_weights(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 1, "train.steps_per_epoch": 1})
    init = save_tiny_model(tmp_path / "models" / "tiny.pt", config)
    seen = WeightsAtStart()
    still = config.with_overrides({"train.learning_rate": 1e-12})
    result = train(tiny_plants[:1], tmp_path / "still", still, run=QUIET, callbacks=[seen], init=init.path)
    _weights_equal(seen.weights, init.network.state_dict())
    after = _not_quantizer(read_checkpoint(result.last)["model"])
    for key, value in _not_quantizer(init.network.state_dict()).items():
        assert torch.allclose(after[key], value, rtol=0, atol=1e-8), key
    curves = CurvePlotter(tmp_path / "moved" / "curves.png")  # draws the start row (no train loss)
    moved = train(tiny_plants[:1], tmp_path / "moved", config, run=QUIET, callbacks=[curves], init=init)
    assert (tmp_path / "moved" / "curves.png").is_file()
    changed = _not_quantizer(read_checkpoint(moved.last)["model"])
    assert any(not torch.equal(changed[k], v) for k, v in _not_quantizer(init.network.state_dict()).items())
    assert result.init == "tiny.pt" and result.history[0]["epoch"] == 0  # the init model validated first
    state = read_checkpoint(result.best)
    assert state["init"] == "tiny.pt"
    assert str(tmp_path) not in str({k: v for k, v in state.items() if k != "model"})


def test_init_takes_the_network_from_the_model_and_refuses_another(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 2, "train.steps_per_epoch": 1})
    init = save_tiny_model(tmp_path / "tiny.pt", config)
    result = train(tiny_plants[:1], tmp_path / "run", run=QUIET, init=init, stop_after_epochs=1)
    assert load_model(result.last).config == config  # no config given: the model's own
    resumed = train(tiny_plants[:1], tmp_path / "run", run=QUIET, resume=True)
    assert resumed.init == "tiny.pt" and read_checkpoint(resumed.last)["init"] == "tiny.pt"
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    for key, value in [("model.base_channels", 16), ("mode", "depth-aware")]:
        other = config.with_overrides({key: value})
        with pytest.raises(DqlrError, match=key) as error:
            train(tiny_plants[:1], tmp_path / "other", other, run=QUIET, init=init)
        assert "\n" not in str(error.value)
    with pytest.raises(DqlrError, match="only one"):
        train(tiny_plants[:1], tmp_path / "run", run=QUIET, init=init, resume=True)
    assert not (tmp_path / "other").exists()


def test_a_time_budget_ends_the_epoch_early_and_saves(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 3, "train.steps_per_epoch": 500})
    run = RunOptions(progress=False, device="cpu", max_minutes=0.002)
    result = train(tiny_plants[:1], tmp_path / "run", config, run=run)
    assert result.out_of_time and not result.interrupted
    # 0.12 s is a few to a few dozen steps, by the machine's speed: far fewer than the epoch's 500
    assert len(result.history) == 1 and result.history[0]["step"] < 500
    loaded = load_model(result.best)
    assert loaded.meta["epoch"] == 1 and (tmp_path / "run" / "last.pt").is_file()
    assert "max_minutes" not in (tmp_path / "run" / "config.yaml").read_text()
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_ctrl_c_in_a_step_keeps_the_last_epoch_and_resume_continues_exactly(
    tiny_plants, tmp_path, monkeypatch
) -> None:
    config = tiny_config()  # 2 epochs of 6 steps
    straight = train(tiny_plants[:1], tmp_path / "a", config, val_stack=tiny_plants[1], run=QUIET)
    calls, step = [0], Trainer._step

    def interrupted_step(self: Trainer, batch: Batch | None = None) -> dict[str, float]:
        calls[0] += 1
        if calls[0] == 9:  # three steps into epoch 2
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", interrupted_step)
    result = train(tiny_plants[:1], tmp_path / "b", config, val_stack=tiny_plants[1], run=QUIET)
    assert result.interrupted and [r["epoch"] for r in result.history] == [1]
    assert load_model(result.best).meta["epoch"] == 1 and read_checkpoint(result.last)["epoch"] == 1
    assert not list((tmp_path / "b").glob(".*tmp*"))
    monkeypatch.undo()
    resumed = train(tiny_plants[:1], tmp_path / "b", val_stack=tiny_plants[1], resume=True, run=QUIET)
    _weights_equal(read_checkpoint(straight.last)["model"], read_checkpoint(resumed.last)["model"])


class CtrlC(Callback):
    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_in_a_callback_returns_with_a_usable_best_model(tiny_plants, tmp_path) -> None:
    config = tiny_config().with_overrides({"train.epochs": 5})
    result = train(tiny_plants[:1], tmp_path / "run", config, run=QUIET, callbacks=[CtrlC()])
    assert result.interrupted and len(result.history) == 1 and result.best_epoch == 1
    out = dqlr.enhance(tiny_plants[1], load_model(result.best))
    assert out.shape == tiny_plants[1].shape


def test_a_teacher_makes_its_outputs_the_targets(tiny_plants, tmp_path) -> None:
    """Distillation: the student is trained towards the teacher's outputs on the same windows, so
    it ends closer to them than the same run on the windows' own slices; the run names its teacher,
    a resume needs it again, and a teacher that reads depth otherwise is refused."""
    teacher_config = tiny_config(base_channels=12).with_overrides({"train.steps_per_epoch": 1})
    teacher = save_tiny_model(tmp_path / "teacher.pt", teacher_config, seed=3)
    config = tiny_config().with_overrides(
        {"train.epochs": 2, "train.steps_per_epoch": 12, "train.learning_rate": 3e-3}
    )
    runs = {}
    for name, given in (("plain", None), ("distilled", teacher)):
        runs[name] = train(tiny_plants[:1], tmp_path / name, config, run=QUIET, teacher=given)
    trainer = Trainer(config, tiny_plants[:1], tiny_plants[1], QUIET)
    batch = trainer.val_batch
    with torch.no_grad():
        wanted, _, _ = teacher.network.eval()(batch.inputs, batch.tops, batch.condition)

    def distance(run) -> float:
        network = load_model(run.last).network.eval()
        with torch.no_grad():
            outputs, _, _ = network(batch.inputs, batch.tops, batch.condition)
        return float(((outputs - wanted) ** 2).mean())

    assert distance(runs["distilled"]) < 0.5 * distance(runs["plain"])
    assert read_checkpoint(runs["distilled"].last)["trainer"]["teacher"] == "teacher.pt"
    with pytest.raises(DqlrError, match="pass --teacher again"):
        train(tiny_plants[:1], tmp_path / "distilled", run=QUIET, resume=True)
    depth_config = teacher_config.with_overrides({"mode": "depth-aware"})
    depth_aware = save_tiny_model(tmp_path / "depth.pt", depth_config)
    with pytest.raises(DqlrError, match="depth"):
        train(tiny_plants[:1], tmp_path / "refused", config, run=QUIET, teacher=depth_aware)


# -- a stack that trains and validates (adapt) -----------------------------------------------------


def test_windows_stay_inside_their_columns() -> None:
    """x is written into every pixel: the windows show which columns they came from."""
    columns = np.broadcast_to(np.arange(80, dtype=np.float32), (10, 30, 80))
    norm = fit_normalization(columns)
    sampler = WindowSampler([columns], [norm], targets=2, crop=16, seed=2, columns=[(40, 60)])
    windows, _ = sampler.sample(64)
    x = windows.numpy() * (norm.high - norm.low) + norm.low
    assert x.min() == pytest.approx(40, abs=1e-3) and x.max() == pytest.approx(59, abs=1e-3)


def test_a_stack_that_also_validates_keeps_its_validation_columns_apart(recwarn) -> None:
    plant = dqlr.simulate(shape=(20, 64, 128), seed=31).observed
    config = tiny_config().with_overrides({"mode": "depth-aware"})
    trainer = Trainer(config, [plant], plant, QUIET)
    split = held_out_split(128, 32)
    assert split == 96  # a quarter of 128 is one crop
    assert trainer.sampler.columns == [(0, 96)] and trainer.val_columns == (96, 128)
    assert trainer.pairs is not None and trainer.pairs.columns == [(0, 96)]
    assert not [w for w in recwarn if issubclass(w.category, dqlr.DqlrWarning)]
    other = Trainer(config, [plant], plant.copy(), QUIET)  # its own validation stack: all columns
    assert other.sampler.columns == [None] and other.val_columns is None
    assert held_out_split(200, 32) == 150 and held_out_split(48, 32) is None
    with pytest.warns(dqlr.DqlrWarning, match="too narrow to keep columns apart"):
        narrow_plant = plant[:, :, :48]
        narrow = Trainer(config, [narrow_plant], narrow_plant, QUIET)
    assert narrow.sampler.columns == [None] and narrow.val_columns is None
