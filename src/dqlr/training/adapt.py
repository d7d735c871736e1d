"""Adapting a trained model to a user's own stacks: self-supervised fine-tuning on a time budget.

DQLR learns from noisy stacks alone, so the stacks a user wants enhanced are also the training
data: no clean images, no second tissue. `adapt` fine-tunes a model (the shipped default unless
told otherwise) on them, in its own mode, for a few minutes of wall time, and leaves the adapted
model as best.pt in a run folder (a complete model for `dqlr enhance --model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dqlr.config import Config, RunOptions
from dqlr.errors import DqlrError
from dqlr.io import Stack
from dqlr.training.run import ModelLike, TrainResult, init_model, train
from dqlr.training.trainer import Callback, StackLike, TrainingStack

# Fine-tuning settings, relative to how the model was trained (see adapt_config for why).
LEARNING_RATE_FACTOR = 0.25
WARMUP_STEPS = 10
STEPS_PER_EPOCH = 20
EPOCHS = 10_000


def adapt_config(config: Config) -> Config:
    """The model's config with a schedule for fine-tuning; the network and loss stay as they are.

    - learning rate a quarter of the model's: the weights are already good, a full rate would
      first undo much of what they know before the few hundred steps of a budget could help;
    - warm-up of WARMUP_STEPS steps: the optimiser starts fresh, and its first moment estimates
      are noisy; a short ramp keeps them from jolting the trained weights;
    - epochs of STEPS_PER_EPOCH steps (about 15 s on 2 CPU cores for the shipped models): every
      epoch is validated and best.pt kept, so a budget or Ctrl-C loses at most that much work;
    - EPOCHS so many that the time budget, never the epoch count, ends the run; the cosine decay
      then hardly moves, so the rate stays flat after warm-up, which suits a short fine-tune.
    """
    return config.with_overrides(
        {
            "train.learning_rate": config.train.learning_rate * LEARNING_RATE_FACTOR,
            "train.warmup_steps": WARMUP_STEPS,
            "train.steps_per_epoch": STEPS_PER_EPOCH,
            "train.epochs": EPOCHS,
        }
    )


def adapt(
    stacks: Sequence[StackLike] | StackLike,
    model: ModelLike | None = None,
    *,
    out_dir: str | Path,
    minutes: float = 3.0,
    run: RunOptions | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fine-tune `model` (default: the shipped default) on `stacks` themselves within `minutes`.

    The stacks are training and validation data at once: the aim is the best model for these
    stacks, not for others. The first one's right-most columns (a quarter, at least one crop; see
    held_out_split) are kept out of training and validate it, so a model that only learned the
    training windows by heart does not win. The model given is validated first (epoch 0), so
    best.pt is never one that validates worse than it on those columns. `minutes` counts training
    from the first step; reading the stacks (and, depth-aware, estimating their degradation) comes
    before. Ctrl-C stops early and keeps best.pt (`result.interrupted`). The run folder `out_dir`
    holds best.pt (the adapted model), last.pt, config.yaml and metrics.csv.
    """
    given: list[StackLike] = (
        [stacks] if isinstance(stacks, str | Path | np.ndarray | Stack | TrainingStack) else list(stacks)
    )
    if not given:
        raise DqlrError("adapt: no stacks given")
    if not minutes > 0:
        raise DqlrError(f"adapt: the time budget must be above 0 minutes, got {minutes}")
    if (Path(out_dir) / "last.pt").exists():
        raise DqlrError(f"{out_dir}: already holds a run; adapt into another folder")
    start, _ = init_model("default" if model is None else model)
    run = RunOptions.of(run, max_minutes=minutes)
    config = adapt_config(start.config)
    return train(given, out_dir, config, val_stack=given[0], run=run, callbacks=callbacks, init=start)
