"""Self-supervised DQLR training: a small Trainer whose whole state round-trips.

The Trainer owns the model, optimiser, schedule, samplers and random streams; `state_dict()` /
`load_state_dict()` carry all of them, so a resumed run continues exactly (CPU and CUDA). Writing
checkpoints, logs and plots is the job of callbacks (dqlr.training.callbacks), not of the loop;
a run folder with resume is dqlr.training.run.train.
Under torchrun (`ranks` from dqlr.training.distributed) the network trains wrapped in
DistributedDataParallel: each rank takes its share of the global batch, gradients and the
dictionary's statistics are averaged, and only rank 0 runs the callbacks (unless one says
`every_rank`), so files are written once.
A fit ends early, always at a step boundary, when RunOptions.max_minutes is spent (the epoch under
way is validated and handed to the callbacks) or on Ctrl-C (nothing more is written: the callbacks'
files from the last finished epoch stay the consistent record, and a resume starts from them).
Everything that touches process-wide torch state (random streams, denormals, threads) happens
inside scoped contexts and is restored afterwards.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dqlr.config import Config, RunOptions
from dqlr.degradation import DepthDegradation
from dqlr.errors import DqlrError, DqlrWarning
from dqlr.io import Stack, check_stack, read_stack
from dqlr.model.checkpoint import LoadedModel, build_network
from dqlr.model.familiarity import METRIC as FAMILIARITY_METRIC
from dqlr.model.familiarity import quantization_error
from dqlr.normalize import Normalization, fit_normalization
from dqlr.runtime import fast_math, mixed_precision, own_random_streams, random_state
from dqlr.training.batches import Batch, pair_batch, pair_sampler, training_batch, window_batch
from dqlr.training.data import Columns, PairSampler, WindowSampler
from dqlr.training.distributed import Ranks
from dqlr.training.losses import dqlr_loss

HELD_OUT_FRACTION = 0.25  # of a stack's width, for validation when it also trains (adapt)


def held_out_split(width: int, crop: int) -> int | None:
    """Where the validation columns of a stack that also trains begin: its right-most quarter, at
    least one crop wide, with at least one crop left to train on; None when it is too narrow.

    Validating on the windows it trains on, adaptation kept the fine-tuned model even where it had
    only learned those windows by heart: on two out-of-domain cases it ended below the model it
    started from (benchmarks/results/out_of_domain.md). Unseen columns of the same stack measure
    what the fine-tuning does for the rest of it, and epoch 0 (the model given) competes on them.
    """
    held = max(crop, math.ceil(width * HELD_OUT_FRACTION))
    return width - held if width - held >= crop else None


VAL_WINDOW_SEED, VAL_PAIR_SEED = 12345, 54321  # fixed validation windows: comparable across epochs


@dataclass
class TrainingStack:
    """A stack ready to train on. Given as such, its `norm` is kept: adaptation trains on the parts
    of a stack that enhancement shows the model (turned over, split, resampled) with the whole
    stack's normalisation, which enhancement uses, rather than each part's own."""

    data: Any
    norm: Normalization
    name: str  # the file name only: checkpoints never hold a machine's paths
    voxel_size: tuple[float, float, float] | None = None
    defocus_only: bool = False  # depth-aware pairs: blur and noise only (see pair_sampler)
    # `data` resized in XY by `zoom` from `source` (another pixel size): pairs are made at the
    # source's pixels and resized as enhancement resizes (see PairSampler)
    source: Any = None
    zoom: float = 1.0

    @property
    def resized(self) -> tuple[Any, float] | None:
        return None if self.source is None or self.zoom == 1.0 else (self.source, self.zoom)


StackLike = str | Path | np.ndarray | Stack | TrainingStack


def load_training_stack(stack: StackLike, config: Config) -> TrainingStack:
    """A stack (path, array or io.Stack) read lazily and checked, with its per-stack normalisation."""
    voxel_size = None
    if isinstance(stack, TrainingStack):
        check_stack(stack.data, stack.name)
        return stack
    if isinstance(stack, np.ndarray):
        data, name = stack, "array"
    elif isinstance(stack, Stack):
        data, name, voxel_size = stack.data, Path(stack.path or "array").name, stack.voxel_size
    else:
        read = read_stack(stack, lazy=True)
        data, name, voxel_size = read.data, Path(stack).name, read.voxel_size
    check_stack(data, name)
    norm = fit_normalization(data, config.data.percentile_low, config.data.percentile_high)
    return TrainingStack(data, norm, name, voxel_size)


def _lr_factor(config: Config) -> Any:
    """Linear warm-up, then cosine decay to 5 % of the learning rate."""
    total = config.train.epochs * config.train.steps_per_epoch
    warmup = min(config.train.warmup_steps, total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Callback:
    """Hooks the Trainer calls; subclass and override what you need.

    Under DDP only rank 0 calls them, unless `every_rank` is set.
    """

    every_rank = False

    def on_start(self, trainer: Trainer) -> None:
        """Before the first epoch of a fit() call."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        """After each epoch, with its metrics row (already in trainer.history)."""


class Trainer:
    """Trains one DQLR network on noisy stacks alone; validation on a separate stack."""

    def __init__(
        self,
        config: Config,
        train_stacks: Sequence[StackLike],
        val_stack: StackLike,
        run: RunOptions | None = None,
        callbacks: Sequence[Callback] = (),
        ranks: Ranks | None = None,
    ) -> None:
        self.config, self.run = config, run or RunOptions()
        self.ranks = ranks or Ranks()
        self.callbacks = [c for c in callbacks if self.ranks.main or c.every_rank]
        self.device = self.ranks.device(self.run.device)  # under torchrun on GPUs: GPU LOCAL_RANK
        self.share = self.ranks.share(config.train.batch_size) if self.ranks.distributed else None
        self.stacks = [load_training_stack(s, config) for s in train_stacks]
        # a stack that both trains and validates (adapt) is read, normalised and estimated once,
        # and gives its training and validation windows from separate columns (see _build_data)
        same = [k for k, given in enumerate(train_stacks) if given is val_stack]
        self.val_index = same[0] if same else None
        self.val = self.stacks[same[0]] if same else load_training_stack(val_stack, config)
        self._build_data()
        with own_random_streams(seed=config.train.seed):
            self.network = build_network(config).to(self.device)
            self.random = random_state()
        # Channels-last activations make the convolutions' backward pass cheaper (CPU oneDNN and
        # GPU alike; benchmarks/results/train_speed.md). Before the optimiser exists, so its
        # moments take the same layout; checkpoints load into any layout (values are copied).
        self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack it
        self.model: torch.nn.Module = self.network  # what a training step calls
        if self.ranks.distributed:
            if self.network.quantizer is not None:
                self.network.quantizer.distributed = True
            # The dictionary stays equal by the quantizer's own all-reduce (DDP's broadcast of the
            # buffers before each forward is left on: it moves rank 0's equal values, no harm).
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            [p for p in self.network.parameters() if p.requires_grad],
            lr=config.train.learning_rate,
            weight_decay=config.train.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config))
        precision = mixed_precision(self.device) if self.run.amp else None
        self.amp_dtype = precision or torch.float32
        self.use_amp = precision is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []
        self.best_metric = math.inf
        self.init: str | None = None  # the model this run started from (a name, never a path)
        self.teacher: torch.nn.Module | None = None  # distillation: its outputs are the targets
        self.teacher_name: str | None = None
        self.deadline: float | None = None
        self.out_of_time = self.interrupted = False

    def start_from(self, model: LoadedModel, name: str) -> None:
        """Begin from a trained model's weights (fine-tuning); optimiser and schedule stay fresh.

        The network was already built from the seed, so the random streams are where a run from
        scratch would have them: loading weights draws no numbers.
        """
        try:
            self.network.load_state_dict(model.network.state_dict())
        except RuntimeError as error:
            first = str(error).splitlines()[0][:120]
            raise DqlrError(f"{name}: weights do not match its config ({first})") from None
        self.init = name

    def distil_from(self, model: LoadedModel, name: str) -> None:
        """Train against a trained model's outputs on the same windows instead of the windows' own
        slices (distillation: a smaller, faster network learns what a larger one does; still no
        clean data). The teacher must read the depth condition as this run does."""
        theirs, ours = model.config.depth_aware, self.config.depth_aware
        meaning = ("reference_fraction", "condition_scale_px")  # what a level means to the network
        if model.config.conditioned != self.config.conditioned or (
            self.config.conditioned and any(getattr(theirs, k) != getattr(ours, k) for k in meaning)
        ):
            raise DqlrError(
                f"--teacher {name}: its mode or depth settings differ from this run's; a teacher must "
                "read the depth condition as the trained model will"
            )
        teacher = copy.deepcopy(model.network)  # no fresh weights drawn: the random streams stay
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.teacher_name = name

    def _targets(self, batch: Batch) -> torch.Tensor:
        """The windows' own slices, or (distillation) the teacher's outputs on the same inputs."""
        if self.teacher is None:
            return batch.targets
        with torch.no_grad():
            outputs: torch.Tensor = self.teacher(batch.inputs, batch.tops, batch.condition)[0]
        return outputs.float()

    def _build_data(self) -> None:
        config = self.config
        train_columns: list[Columns] = [None] * len(self.stacks)
        val_columns: Columns = None  # None: all columns (a validation stack of its own)
        if self.val_index is not None:
            split = held_out_split(int(self.val.data.shape[-1]), config.data.crop)
            if split is None:
                warnings.warn(
                    f"{self.val.name}: too narrow to keep columns apart for validation; the model "
                    "kept is the one that fits the training windows best",
                    DqlrWarning,
                    stacklevel=3,
                )
            else:
                train_columns[self.val_index] = (0, split)
                val_columns = (split, int(self.val.data.shape[-1]))
        self.val_columns = val_columns

        def sampler(stacks: list[TrainingStack], seed: int, columns: list[Columns]) -> WindowSampler:
            return WindowSampler(
                [s.data for s in stacks],
                [s.norm for s in stacks],
                targets=config.model.predict_next + 1,
                crop=config.data.crop,
                augment=config.data.augment,
                top_probability=config.data.top_state_probability,
                seed=seed,
                columns=columns,
            )

        try:
            self.sampler = sampler(self.stacks, config.train.seed, train_columns)
            val_sampler = sampler([self.val], 0, [val_columns])
        except ValueError as error:
            raise DqlrError(f"train: {error}; use a smaller model.predict_next") from None
        self.val_batch = window_batch(
            *val_sampler.fixed_windows(config.train.val_windows, seed=VAL_WINDOW_SEED)
        )
        self.pairs: PairSampler | None = None
        if config.conditioned:
            estimates: dict[Any, DepthDegradation] = {}
            data, norms = [s.data for s in self.stacks], [s.norm for s in self.stacks]
            defocus, resized = [s.defocus_only for s in self.stacks], [s.resized for s in self.stacks]
            sizes = [s.voxel_size for s in self.stacks]
            self.pairs = pair_sampler(data, norms, config, estimates, train_columns, defocus, resized, sizes)
            val = self.val
            val_pairs = pair_sampler(
                [val.data],
                [val.norm],
                config,
                estimates,
                [val_columns],
                [val.defocus_only],
                [val.resized],
                [val.voxel_size],
            )
            if val_pairs is not None:
                rng = np.random.default_rng(VAL_PAIR_SEED)
                self.val_batch = self.val_batch.join(pair_batch(val_pairs, config.train.val_windows, rng))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain data (weights_only-safe)."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "random": self.random,
            "epoch": self.epoch,
            "step": self.step,
            "history": [dict(row) for row in self.history],
            "best_metric": self.best_metric,
            "teacher": self.teacher_name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.random = state["random"]
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.best_metric = float(state["best_metric"])

    @contextmanager
    def _scoped(self) -> Iterator[None]:
        """Own random streams and fast CPU math for the block; the caller's are restored after."""
        with own_random_streams(self.random), fast_math(self.run.num_threads):
            try:
                yield
            finally:
                self.random = random_state()

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, max_epochs: int | None = None) -> list[dict[str, float]]:
        """Train until config.train.epochs (or `max_epochs` more epochs, or the time budget); returns
        the history. Ctrl-C ends it too (`interrupted`), after the files of the last finished epoch.

        A run that starts from a model (start_from) first validates it as epoch 0, so best.pt exists
        from the start and is replaced only by an epoch that validates better than the model given.
        """
        minutes = self.run.max_minutes
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        self.out_of_time = self.interrupted = False
        try:
            for callback in self.callbacks:
                callback.on_start(self)
            if self.init is not None and not self.history:
                with self._scoped():
                    row = self._start_row()
                self._end_epoch(row)
            done = 0
            while self._more_epochs(done, max_epochs):
                with self._scoped():
                    row = self._epoch()
                self._end_epoch(row)
                done += 1
        except KeyboardInterrupt:
            self.interrupted = True
        return self.history

    def _more_epochs(self, done: int, max_epochs: int | None) -> bool:
        if self.epoch >= self.config.train.epochs or (max_epochs is not None and done >= max_epochs):
            return False
        if self.out_of_time or (done and self._past_deadline()):  # spent while validating or saving
            self.out_of_time = True
            return False
        return True

    def _past_deadline(self) -> bool:
        """Whether the time budget is spent (on any rank, so all stop at the same step)."""
        return self.deadline is not None and self.ranks.any(time.monotonic() >= self.deadline)

    def _end_epoch(self, row: dict[str, float]) -> None:
        is_best = row["val_loss"] < self.best_metric
        self.best_metric = min(self.best_metric, row["val_loss"])
        self.history.append(row)
        for callback in self.callbacks:
            callback.on_epoch_end(self, row, is_best)

    def _start_row(self) -> dict[str, float]:
        """Epoch 0: the starting model validated, so fine-tuning must beat it to replace best.pt."""
        started = time.perf_counter()
        row: dict[str, float] = {"epoch": 0, "step": self.step, "train_loss": math.nan}
        row.update(self.validate())
        return self._finish_row(row, started)

    def _finish_row(self, row: dict[str, float], started: float) -> dict[str, float]:
        quantizer = self.network.quantizer
        if quantizer is not None:
            row["dead_codes"] = float((quantizer.cluster_size < quantizer.dead_code_threshold).sum())
        row["lr"] = float(self.scheduler.get_last_lr()[0])
        row["seconds"] = time.perf_counter() - started
        return row

    def _epoch(self) -> dict[str, float]:
        """config.train.steps_per_epoch steps (fewer when the time budget runs out), then validation.

        Batches are made between steps: on 2 cores, making the next one in a second thread while a
        step trains takes the cores from the network's threads, and it was slower in each of our
        measurements (benchmarks/results/train_speed.md).
        """
        started = time.perf_counter()
        steps, done = self.config.train.steps_per_epoch, 0
        sums: dict[str, float] = {}
        self.network.train()
        desc = f"epoch {self.epoch + 1}/{self.config.train.epochs}"
        progress = self.run.progress and self.ranks.main
        with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
            while done < steps and not self.out_of_time:
                for key, value in self._step().items():
                    sums[key] = sums.get(key, 0.0) + value
                done += 1
                self.out_of_time = self._past_deadline()
                bar.update()
                bar.set_postfix(loss=f"{sums['train_loss'] / done:.4f}")
        self.epoch += 1
        row: dict[str, float] = {"epoch": self.epoch, "step": self.step}
        row.update(self.ranks.mean({k: v / done for k, v in sums.items()}))
        row.update(self.validate())
        return self._finish_row(row, started)

    def _batch(self) -> Batch:
        """The next training batch (the sampler's generator draws it)."""
        return training_batch(self.sampler, self.pairs, self.config, self.share)

    def _step(self, batch: Batch | None = None) -> dict[str, float]:
        """One optimiser step on `batch` (the next one drawn when not given)."""
        batch = (batch if batch is not None else self._batch()).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs, vq_loss, stats = self.model(batch.inputs, batch.tops, batch.condition)
        loss, parts = dqlr_loss(outputs, self._targets(batch), vq_loss, self.config.loss)
        if self.ranks.any(not bool(torch.isfinite(loss))):  # every rank stops, with the same line
            raise DqlrError(
                f"train: loss became {float(loss)} at step {self.step}; lower the learning rate "
                "(train.learning_rate)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"train_loss": float(loss.detach()), **parts, **stats}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and PSNR of the reconstructed slice against its target (data range 1)."""
        self.network.eval()
        size = self.config.train.batch_size
        losses, mses, stats_sum = [], [], dict[str, float]()
        for start in range(0, self.val_batch.inputs.shape[0], size):
            part: Batch = self.val_batch.part(start, start + size).to(self.device)
            outputs, vq_loss, stats = self.network(part.inputs, part.tops, part.condition)
            loss, _ = dqlr_loss(outputs, part.targets, vq_loss, self.config.loss)
            losses.append(float(loss))
            mses.append(float(((outputs[:, 0].float() - part.targets[:, 0]) ** 2).mean()))
            for key, value in stats.items():
                stats_sum[key] = stats_sum.get(key, 0.0) + value
        result = {"val_loss": float(np.mean(losses)), "val_psnr": float(-10 * np.log10(np.mean(mses)))}
        result.update({f"val_{k}": v / len(losses) for k, v in stats_sum.items()})
        # Saved with the model: a user's stack is later compared with it (dqlr.model.familiarity).
        error = quantization_error(self.network, self.val.data, self.val.norm)
        if error is not None:
            result[FAMILIARITY_METRIC] = error
        self.network.train()
        return result

    def voxel_size(self) -> list[float] | None:
        """The training stacks' voxel size when all share one known size (saved with the model,
        so a stack of another pixel size can be resampled to it)."""
        sizes = {s.voxel_size for s in self.stacks}
        only = sizes.pop() if len(sizes) == 1 else None
        return list(only) if only is not None else None

    def normalization_record(self) -> dict[str, Any]:
        """How intensities were normalised (per stack), saved with the model."""
        data = self.config.data
        return {
            "percentile_low": data.percentile_low,
            "percentile_high": data.percentile_high,
            "per_stack": True,
            "training_stacks": [{"name": s.name, **s.norm.to_dict()} for s in self.stacks],
        }
