"""Training under torchrun (DDP): two gloo processes on the CPU train like one process on the same
global batch, hold the same weights and dictionary on both ranks, write files from rank 0 alone,
and resume; the command line works under torchrun itself. Each rank reads only its share."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import dqlr
from dqlr.config import Config, RunOptions, save_config
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import read_checkpoint
from dqlr.normalize import fit_normalization
from dqlr.training.batches import pair_sampler, training_batch
from dqlr.training.data import WindowSampler
from dqlr.training.distributed import Ranks
from dqlr.training.run import train
from dqlr.training.trainer import Callback, Trainer
from tests.conftest import tiny_config

# float32 steps: in bf16 the ranks' half batches and one process's whole batch round differently
RUN = RunOptions(progress=False, device="cpu", num_threads=1, amp=False)
ROOT = Path(__file__).resolve().parents[1]


def _config(mode: str = "paper") -> Config:
    # A threshold just under 1 retires every code unused for one step, so restarts happen each step.
    return tiny_config(dead_code_threshold=0.995).with_overrides(
        {"mode": mode, "train.epochs": 2, "train.steps_per_epoch": 2}
    )


@pytest.fixture(scope="module")
def plants() -> list[np.ndarray]:
    """Two stacks big enough for a measured blur curve (depth-aware pairs), not as the simulator
    wrote them: mirrored in x and y, float, on another intensity scale."""
    from dqlr.simulation import simulate_plant

    made = [simulate_plant(shape=(16, 64, 64), seed=s).observed for s in (21, 22)]
    return [np.ascontiguousarray(p[:, ::-1, ::-1]).astype(np.float32) / 300 for p in made]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- the pieces, in one process ----------------------------------------------------------------
def test_a_batch_splits_into_equal_contiguous_shares() -> None:
    assert [Ranks(r, 2).share(8) for r in range(2)] == [range(0, 4), range(4, 8)]
    assert Ranks().share(5) == range(5)
    with pytest.raises(DqlrError, match="batch_size 4 does not split evenly over 3 processes"):
        Ranks(1, 3).share(4)


def test_the_ranks_shares_make_up_the_single_process_batch(plants, tiny_plants) -> None:
    config = _config("depth-aware").with_overrides({"train.batch_size": 6, "depth_aware.pair_fraction": 0.5})
    stacks = [plants[0], tiny_plants[0]]
    norms = [fit_normalization(s) for s in stacks]
    pairs = pair_sampler(stacks, norms, config)
    assert pairs is not None

    def sampler() -> WindowSampler:
        return WindowSampler(stacks, norms, targets=2, crop=32, seed=3)

    whole_sampler = sampler()
    whole = training_batch(whole_sampler, pairs, config)
    for world in (2, 3):  # with 3 ranks, the middle one holds windows and pairs
        shares, samplers = [], []
        for rank in range(world):
            samplers.append(sampler())
            shares.append(training_batch(samplers[-1], pairs, config, Ranks(rank, world).share(6)))
        assert all(s.inputs.shape[0] == 6 // world for s in shares)
        assert torch.equal(torch.cat([s.inputs for s in shares]), whole.inputs)
        assert torch.equal(torch.cat([s.targets for s in shares]), whole.targets)
        assert torch.equal(torch.cat([s.tops for s in shares]), whole.tops)
        levels = [s.condition if s.condition is not None else torch.zeros(len(s.tops)) for s in shares]
        assert torch.equal(torch.cat(levels), whole.condition)
        for each in samplers:  # every rank's generator is where the single process's is
            assert each.rng.bit_generator.state == whole_sampler.rng.bit_generator.state


# -- two processes -----------------------------------------------------------------------------
class _SaveRankWeights(Callback):
    """Each rank's weights and dictionary after every epoch (runs on every rank, unlike the writers)."""

    every_rank = True

    def __init__(self, out: Path, rank: int) -> None:
        self.out, self.rank = out, rank

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        torch.save(trainer.network.state_dict(), self.out / f"rank{self.rank}-epoch{trainer.epoch}.pt")


def _worker(rank: int, ports: list[int], tiny: list[np.ndarray], files: list[Path], out: Path) -> None:
    """One process as torchrun would start it (its environment); three runs, a fresh group each:
    one epoch of a run, its resume to the end, and the command line's `dqlr train` (depth-aware)."""
    import dqlr.training.callbacks as callbacks
    from dqlr.cli import main

    written: list[str] = []
    save = callbacks.save_checkpoint

    def spy(path: Any, state: Any) -> Any:
        written.append(Path(path).name)
        return save(path, state)

    def join(port: int) -> None:
        env = {
            "RANK": rank,
            "WORLD_SIZE": 2,
            "LOCAL_RANK": rank,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        os.environ.update({k: str(v) for k, v in env.items()})

    callbacks.save_checkpoint = spy  # type: ignore[assignment]
    for port, resume in zip(ports, (False, True), strict=False):
        join(port)
        result = train(
            tiny[:1],
            out / "run",
            None if resume else _config(),
            val_stack=tiny[1],
            resume=resume,
            run=RUN,
            stop_after_epochs=None if resume else 1,
            callbacks=[_SaveRankWeights(out, rank)],
        )
        assert result.rank == rank
    (out / f"rank{rank}-written.json").write_text(json.dumps(written))
    join(ports[2])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["train", str(files[0]), "--val", str(files[1]), "--out", str(out / "cli")]
            + ["--config", str(out / "config.yaml"), "--device", "cpu", "--threads", "1", "--full-precision"]
        )
    (out / f"rank{rank}-cli.txt").write_text(f"{code}\n{printed.getvalue()}")


def test_two_processes_train_like_one_on_the_same_global_batch(plants, tiny_plants, tmp_path) -> None:
    files = [dqlr.write_stack(tmp_path / f"plant{i}.tif", s, (1.0, 0.4, 0.4)) for i, s in enumerate(plants)]
    deep = _config("depth-aware").with_overrides({"train.epochs": 1, "train.steps_per_epoch": 3})
    save_config(deep, tmp_path / "config.yaml")
    mp.spawn(_worker, ([_free_port() for _ in range(3)], tiny_plants, files, tmp_path), nprocs=2)

    # both ranks hold the same weights and the same dictionary (EMA statistics, restarts), bit for bit
    for epoch in (1, 2):
        _equal(*(torch.load(tmp_path / f"rank{r}-epoch{epoch}.pt") for r in (0, 1)))
    # rank 0 alone wrote checkpoints: epoch 1, then epoch 2 after the resume; and printed
    assert json.loads((tmp_path / "rank1-written.json").read_text()) == []
    assert json.loads((tmp_path / "rank0-written.json").read_text()).count("last.pt") == 2
    assert (tmp_path / "rank1-cli.txt").read_text() == "0\n"
    printed = (tmp_path / "rank0-cli.txt").read_text()
    assert printed.startswith("0\n") and printed.count("checkpoints: ") == 1

    # after 4 steps, one of them past a resume: the weights of one process on the same global batch
    one = train(tiny_plants[:1], tmp_path / "one", _config(), val_stack=tiny_plants[1], run=RUN)
    two, single = read_checkpoint(tmp_path / "run" / "last.pt"), read_checkpoint(one.last)
    assert two["step"] == single["step"] == 4
    _close(two["model"], single["model"])
    for a, b in zip(two["trainer"]["history"], single["trainer"]["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)  # the global batch's mean
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # depth-aware, from the command line, on float stacks the simulator did not write as they are
    one = train([files[0]], tmp_path / "one-deep", deep, val_stack=files[1], run=RUN)
    two, single = read_checkpoint(tmp_path / "cli" / "last.pt"), read_checkpoint(one.last)
    assert two["step"] == single["step"] == 3
    assert two["normalization"] == single["normalization"]
    _close(two["model"], single["model"])
