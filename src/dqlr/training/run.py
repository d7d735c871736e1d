"""A training run in a folder: `train()` sets up the Trainer with its callbacks, and resumes.

The folder holds config.yaml, last.pt, best.pt and metrics.csv (plus what extra callbacks write,
e.g. curves.png from the public `dqlr.train`). Started by torchrun, the run trains on all its
processes (dqlr.training.distributed); rank 0 alone writes the folder and prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dqlr.config import Config, RunOptions
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import SHIPPED, LoadedModel, load_model, read_checkpoint, shipped_model_path
from dqlr.training.callbacks import CheckpointWriter, CsvLogger, EpochPrinter
from dqlr.training.distributed import Ranks, process_group
from dqlr.training.trainer import Callback, StackLike, Trainer

ModelLike = LoadedModel | str | Path


@dataclass
class TrainResult:
    """Where a run is and what it did. best.pt and last.pt exist once an epoch (or, with `init`,
    the start model's validation) has finished; `interrupted` and `out_of_time` say why it stopped."""

    run_dir: Path
    last: Path
    best: Path
    history: list[dict[str, float]]
    interrupted: bool = False  # Ctrl-C: the files are those of the last finished epoch
    out_of_time: bool = False  # RunOptions.max_minutes was spent
    init: str | None = None  # the model the run started from, by file or shipped name
    rank: int = 0  # this process's rank under torchrun; only rank 0 wrote the files

    @property
    def best_epoch(self) -> int | None:
        """The epoch best.pt holds (0: the start model was never beaten), None before any."""
        if not self.history:
            return None
        return int(min(self.history, key=lambda row: row["val_loss"])["epoch"])


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


def model_name(model: LoadedModel) -> str:
    """How a checkpoint names the model a run started from: a shipped name or a file name."""
    if model.path is None:
        return "in-memory model"
    path = Path(model.path).resolve()
    for name in SHIPPED:
        try:
            if shipped_model_path(name).resolve() == path:
                return name
        except DqlrError:  # that shipped file is missing: it cannot be this one
            continue
    return path.name


def _fixed_settings(config: Config) -> dict[str, Any]:
    """What an init model brings: its mode, its network and (depth-aware) what its condition means."""
    values = config.to_dict()
    fixed = {"mode": values["mode"], **{f"model.{k}": v for k, v in values["model"].items()}}
    if config.conditioned:
        for key in ("reference_fraction", "condition_scale_px"):
            fixed[f"depth_aware.{key}"] = values["depth_aware"][key]
    return fixed


def init_config(model: LoadedModel, name: str, config: Config | None) -> Config:
    """The config of a run that starts from `model`: its own, or `config` if that agrees on the
    network (mode, model and the depth condition's meaning); the rest of `config` is used as given."""
    if config is None:
        return model.config
    theirs, given = _fixed_settings(model.config), _fixed_settings(config)
    for key, value in theirs.items():
        if given.get(key) != value:
            raise DqlrError(
                f"--init {name}: the config's {key} is {given.get(key)!r} but the model's is {value!r}; "
                "the network comes from the init model, so drop that key from the config (or train "
                "without --init)"
            )
    return config


def init_model(init: ModelLike) -> tuple[LoadedModel, str]:
    model = init if isinstance(init, LoadedModel) else load_model(init)
    return model, model_name(model)


def train(
    train_stacks: Sequence[StackLike],
    run_dir: str | Path,
    config: Config | None = None,
    val_stack: StackLike | None = None,
    resume: bool = False,
    run: RunOptions | None = None,
    stop_after_epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
    init: ModelLike | None = None,
    teacher: ModelLike | None = None,
) -> TrainResult:
    """Train DQLR on noisy stacks alone; writes last.pt, best.pt, config.yaml and metrics.csv.

    Validation uses `val_stack`; without one, the last of several training stacks is held out (split
    by stack, never by slice); a single stack is then used for both, its right-most columns kept
    out of training for validation (Trainer: held_out_split), which the log says.
    `stop_after_epochs` ends this call early (a time-boxed run) and `resume=True` picks it up; a
    resumed run refuses a config that differs from the saved one. `run` says how to execute (device,
    threads, mixed precision, progress, a time budget); it is never saved. With config.mode
    "depth-aware", part of every batch is pairs made by degrading the sharp upper slices of each
    training stack like its deeper ones (see dqlr.degradation).

    `init` (a LoadedModel, a .pt file or a shipped name) starts from that model's weights, with a
    fresh optimiser and schedule: the network and mode are the model's, a given `config` must agree
    on them and brings its loss, data and train sections. Its validation is epoch 0, and the
    checkpoints name it ("init"). `teacher` (the same kinds) distils: the targets are that model's
    outputs on the same windows, so a smaller network learns what a trained one does (pass it again
    to resume). Ctrl-C returns normally, with `interrupted` set.

    Started by torchrun (RANK, WORLD_SIZE, ... in the environment) it trains with DDP on all the
    processes, config.train.batch_size being the global batch; each process returns, after rank 0
    has written the files.
    """
    run = run or RunOptions()
    with process_group(run.device) as ranks:
        result = _train(
            train_stacks,
            Path(run_dir),
            config,
            val_stack,
            resume,
            run,
            stop_after_epochs,
            callbacks,
            init,
            teacher,
            ranks,
        )
        ranks.barrier()  # the files are whole before any rank returns
    return result


def _train(
    train_stacks: Sequence[StackLike],
    run_dir: Path,
    config: Config | None,
    val_stack: StackLike | None,
    resume: bool,
    run: RunOptions,
    stop_after_epochs: int | None,
    callbacks: Sequence[Callback],
    init: ModelLike | None,
    teacher: ModelLike | None,
    ranks: Ranks,
) -> TrainResult:
    if not ranks.main:
        run = RunOptions.of(run, progress=False)
    if not train_stacks:
        raise DqlrError("train: no training stacks given")
    if init is not None and resume:
        raise DqlrError(f"{run_dir}: --init starts a new run and --resume continues one; pass only one")
    state, start = None, None
    if resume:
        config, state = _resume_config(run_dir, config)
    else:
        if init is not None:
            start = init_model(init)
            config = init_config(*start, config)
        config = config or Config()
        if (run_dir / "last.pt").exists():
            raise DqlrError(f"{run_dir}: already holds a run; pass --resume or another --out")
    stacks = list(train_stacks)
    if val_stack is None and len(stacks) > 1:
        val_stack, stacks = stacks[-1], stacks[:-1]
    elif val_stack is None:
        val_stack = stacks[0]
    writers: list[Callback] = [CheckpointWriter(run_dir), CsvLogger(run_dir / "metrics.csv"), *callbacks]
    if run.progress:
        writers.append(EpochPrinter())
    trainer = Trainer(config, stacks, val_stack, run, writers, ranks)
    if state is not None:
        _check_resumed_stacks(run_dir, state, trainer)
        trainer.load_state_dict({**state["trainer"], "model": state["model"]})
        trainer.init = state.get("init")
        distilled = state["trainer"].get("teacher")
        if distilled and teacher is None:
            raise DqlrError(f"{run_dir}: this run learns from the teacher {distilled}; pass --teacher again")
    else:
        if start is not None:
            trainer.start_from(*start)
        if run.progress:
            origin = f", starting from {trainer.init}" if trainer.init else ""
            held = trainer.val_columns
            note = f" (columns {held[0]}-{held[1] - 1}, kept out of training)" if held else ""
            tqdm.write(
                f"dqlr train: {len(stacks)} training stack(s), validation on {trainer.val.name}{note}{origin}"
            )
    if teacher is not None:
        trainer.distil_from(*init_model(teacher))
    trainer.fit(stop_after_epochs)
    if run.progress:
        _say_why_stopped(trainer, run_dir)
    return TrainResult(
        run_dir,
        run_dir / "last.pt",
        run_dir / "best.pt",
        trainer.history,
        interrupted=trainer.interrupted,
        out_of_time=trainer.out_of_time,
        init=trainer.init,
        rank=ranks.rank,
    )


def _check_resumed_stacks(run_dir: Path, state: dict[str, Any], trainer: Trainer) -> None:
    saved = [s["name"] for s in state["normalization"]["training_stacks"]]
    given = [s.name for s in trainer.stacks]
    if saved != given:
        raise DqlrError(
            f"{run_dir}: --resume needs the run's training stacks ({', '.join(saved)}); "
            f"given {', '.join(given)}"
        )


def _say_why_stopped(trainer: Trainer, run_dir: Path) -> None:
    kept = f"{run_dir / 'best.pt'} is the best so far" if trainer.history else "nothing was saved"
    if trainer.interrupted:
        tqdm.write(f"dqlr train: interrupted; {kept}")
    elif trainer.out_of_time:
        tqdm.write(f"dqlr train: time budget of {trainer.run.max_minutes:g} min spent; {kept}")
