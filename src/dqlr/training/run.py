"""A training run in a folder: `train()` sets up the Trainer with its callbacks, and resumes.

The folder holds config.yaml, last.pt, best.pt and metrics.csv (plus what extra callbacks write,
e.g. curves.png from the public `dqlr.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dqlr.config import Config, RunOptions
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import read_checkpoint
from dqlr.training.callbacks import CheckpointWriter, CsvLogger, EpochPrinter
from dqlr.training.trainer import Callback, StackLike, Trainer


@dataclass
class TrainResult:
    run_dir: Path
    last: Path
    best: Path
    history: list[dict[str, float]]


def _resume_config(run_dir: Path, config: Config | None) -> tuple[Config, dict[str, Any]]:
    last = run_dir / "last.pt"
    if not last.is_file():
        raise DqlrError(f"{last}: nothing to resume; train without --resume first")
    state = read_checkpoint(last)
    saved = Config.from_dict(state["config"], source=str(last))
    if "trainer" not in state:
        raise DqlrError(f"{last}: holds a model without its training state; it cannot be resumed")
    if config is not None and config != saved:
        raise DqlrError(
            f"{run_dir}: --resume continues with the run's saved config; drop --config, --set, --epochs "
            "and --mode (they would be ignored), or train into a new --out"
        )
    return saved, state


def train(
    train_stacks: Sequence[StackLike],
    run_dir: str | Path,
    config: Config | None = None,
    val_stack: StackLike | None = None,
    resume: bool = False,
    run: RunOptions | None = None,
    stop_after_epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train DQLR on noisy stacks alone; writes last.pt, best.pt, config.yaml and metrics.csv.

    Validation uses `val_stack`; without one, the last of several training stacks is held out (split
    by stack, never by slice); a single stack is then used for both, which the log says.
    `stop_after_epochs` ends this call early (a time-boxed run) and `resume=True` picks it up; a
    resumed run refuses a config that differs from the saved one. `run` says how to execute (device,
    threads, mixed precision, progress); it is never saved. With config.mode "depth-aware", part of
    every batch is pairs made by degrading the sharp upper slices of each training stack like its
    deeper ones (see dqlr.degradation).
    """
    run_dir, run = Path(run_dir), run or RunOptions()
    if not train_stacks:
        raise DqlrError("train: no training stacks given")
    state = None
    if resume:
        config, state = _resume_config(run_dir, config)
    else:
        config = config or Config()
        if (run_dir / "last.pt").exists():
            raise DqlrError(f"{run_dir}: already holds a run; pass --resume or another --out")
    stacks, note = list(train_stacks), ""
    if val_stack is None and len(stacks) > 1:
        val_stack, stacks = stacks[-1], stacks[:-1]
    elif val_stack is None:
        val_stack, note = stacks[0], " (single stack: validated on its own slices)"
    writers: list[Callback] = [CheckpointWriter(run_dir), CsvLogger(run_dir / "metrics.csv"), *callbacks]
    if run.progress:
        writers.append(EpochPrinter())
    trainer = Trainer(config, stacks, val_stack, run, writers)
    if state is not None:
        saved = [s["name"] for s in state["normalization"]["training_stacks"]]
        given = [s.name for s in trainer.stacks]
        if saved != given:
            raise DqlrError(
                f"{run_dir}: --resume needs the run's training stacks ({', '.join(saved)}); "
                f"given {', '.join(given)}"
            )
        trainer.load_state_dict({**state["trainer"], "model": state["model"]})
    elif run.progress:
        tqdm.write(f"dqlr train: {len(stacks)} training stack(s), validation on {trainer.val.name}{note}")
    trainer.fit(stop_after_epochs)
    return TrainResult(run_dir, run_dir / "last.pt", run_dir / "best.pt", trainer.history)
