"""Depth-aware mode: conditioned model, pairs in the batch, and sharper deep slices than paper mode."""

import numpy as np
import pytest

from dqlr.config import RunOptions
from dqlr.evaluation.metrics import sharpness
from dqlr.inference.enhance import degradation_levels, enhance
from dqlr.model.checkpoint import load_model
from dqlr.simulation import simulate_plant
from dqlr.training.run import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def plants():
    return [simulate_plant(shape=(24, 128, 128), seed=s) for s in (21, 22)]


def _run(mode: str, plants, folder) -> str:
    config = tiny_config().with_overrides(
        {
            "mode": mode,
            "train.epochs": 2,
            "train.steps_per_epoch": 30,
            "data.crop": 40,
            "train.batch_size": 8,
            "train.learning_rate": 3e-3,
            "depth_aware.pair_fraction": 0.75,
        }
    )
    train([plants[0].observed], folder, config, val_stack=plants[1].observed, run=RunOptions(progress=False))
    return str(folder / "last.pt")


def test_depth_aware_sharpens_deep_slices_more_than_paper_mode(plants, tmp_path) -> None:
    paper = _run("paper", plants, tmp_path / "paper")
    aware = _run("depth-aware", plants, tmp_path / "aware")
    model = load_model(aware)
    assert model.config.conditioned and model.meta["mode"] == "depth-aware"
    levels, notes = degradation_levels(plants[1].observed, model)
    assert levels is not None and not any("without depth conditioning" in n for n in notes)
    assert levels[-1] > levels[len(levels) // 4]  # deeper slices get a higher degradation level
    deep = range(18, 24)
    sharp = {}
    for name, path in (("paper", paper), ("aware", aware)):
        # guard off: this scores what training taught each network; the guard may replace a
        # tiny model's deep slices by plain smoothing (which of them it replaces varies with the
        # last bits of the arithmetic, e.g. the convolutions' memory layout)
        result = enhance(plants[1].observed, path, guard=False)
        sharp[name] = np.mean([sharpness(result[z]) for z in deep])
    assert sharp["aware"] > 1.1 * sharp["paper"], sharp


def test_the_trainers_pairs_take_their_blur_along_z_from_each_stacks_voxel_size(plants) -> None:
    """axial_ratio is in µm per µm: a stack of 1 µm slices and 0.25 µm pixels gets 0.75 slices of z
    blur per pixel of lateral blur at ratio 3, one of 0.5 µm slices twice that; a stack of unknown
    voxel size gets none; the shipped recipe (ratio 0) none at all."""
    from dqlr.io import Stack
    from dqlr.training.trainer import Trainer

    config = tiny_config().with_overrides({"mode": "depth-aware", "depth_aware.axial_ratio": 3.0})
    given = [
        Stack(plants[0].observed, (1.0, 0.25, 0.25)),
        Stack(plants[1].observed, (0.5, 0.25, 0.25)),
        plants[0].observed,  # no voxel size
    ]
    trainer = Trainer(config, given, plants[1].observed, RunOptions(progress=False))
    assert trainer.pairs is not None
    assert trainer.pairs.axial_px == pytest.approx([0.75, 1.5, 0.0])
    shipped = Trainer(config.with_overrides({"depth_aware.axial_ratio": 0.0}), given[:1], plants[1].observed)
    assert shipped.pairs is not None and shipped.pairs.axial_px == [0.0]
