"""Shared fixtures: tiny configs and tiny simulated stacks so the suite stays fast on 2 cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dqlr.config import Config


def imagej_luts() -> list[np.ndarray]:
    """Magenta and green lookup tables, for the two channels of write_imagej_hyperstack."""
    from dqlr.io import Channel

    return [Channel.lut_of("FF00FF"), Channel.lut_of("00FF00")]


def write_imagej_hyperstack(
    path: Path, tzcyx: np.ndarray, pixel_um: float, spacing_um: float, ranges: tuple, info: str
) -> None:
    """A 2-channel ImageJ hyperstack (TZCYX) with display ranges, LUTs, slice labels and Info."""
    import tifffile

    t, z, c = tzcyx.shape[:3]
    tifffile.imwrite(
        path,
        tzcyx,
        imagej=True,
        resolution=(1 / pixel_um, 1 / pixel_um),
        metadata={
            "axes": "TZCYX",
            "spacing": spacing_um,
            "unit": "um",
            "Ranges": ranges,
            "LUTs": imagej_luts(),
            "Labels": [f"t{i} z{j} c{k}" for i in range(t) for j in range(z) for k in range(c)],
            "Info": info,
        },
    )


class RecordedReads:
    """An array that notes the shape of every read from it, to check what a lazy reader reads."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key: object) -> np.ndarray:
        self.reads.append(np.asarray(self.data[key]).shape)
        return self.data[key]


def tiny_config(**model: object) -> Config:
    """A model small enough to train for a few dozen steps in seconds."""
    config = Config()
    values = config.to_dict()
    values["model"].update(
        {"base_channels": 8, "latent_channels": 8, "res_blocks": 1, "predict_next": 1, **model}
    )
    values["data"].update({"crop": 32})
    values["train"].update(
        {
            "epochs": 2,
            "steps_per_epoch": 6,
            "batch_size": 4,
            "warmup_steps": 2,
            "val_windows": 4,
        }
    )
    return Config.from_dict(values)


def save_tiny_model(folder: Path, **model: object) -> str:
    """An untrained but deterministic tiny model (seed 0) saved as a real checkpoint: fast to load
    and run, for tests of the paths around the network."""
    from dqlr.model import DQLR
    from dqlr.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = tiny_config(**model)
    path = folder / "tiny.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": DQLR(config.model).state_dict()})
    return str(path)


@pytest.fixture
def config() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_plants() -> list[np.ndarray]:
    from dqlr.simulation import simulate_plant

    return [simulate_plant(shape=(10, 48, 48), seed=s).observed for s in (1, 2)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
