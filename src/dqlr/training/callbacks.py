"""What a training run writes, as small Trainer callbacks: checkpoints, the CSV log, a line per epoch.

Plots of the curves live with the other pictures (dqlr.reporting.figures.CurvePlotter).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tqdm.auto import tqdm

from dqlr.atomic import write_text
from dqlr.config import save_config
from dqlr.model.checkpoint import save_checkpoint
from dqlr.training.trainer import Callback, Trainer


class CheckpointWriter(Callback):
    """config.yaml at the start; last.pt after every epoch and best.pt when validation improves."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_start(self, trainer: Trainer) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(trainer.config, self.run_dir / "config.yaml")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        state = trainer.state_dict()
        checkpoint = {
            "config": trainer.config.to_dict(),
            "model": state.pop("model"),
            "normalization": trainer.normalization_record(),
            "epoch": trainer.epoch,
            "step": trainer.step,
            "metrics": dict(row),
            "init": trainer.init,  # a file or shipped name, never a path
            "voxel_size": trainer.voxel_size(),
            "trainer": state,
        }
        save_checkpoint(self.run_dir / "last.pt", checkpoint)
        if is_best:
            save_checkpoint(self.run_dir / "best.pt", checkpoint)


class CsvLogger(Callback):
    """metrics.csv: one row per epoch (loss, validation PSNR, codebook use), rewritten atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        history = trainer.history
        keys = list(dict.fromkeys(k for r in history for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        write_text(self.path, buffer.getvalue())


class EpochPrinter(Callback):
    """One line per epoch on the terminal."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], is_best: bool) -> None:
        perplexity = f"  perplexity {row['val_perplexity']:.1f}" if "val_perplexity" in row else ""
        epoch = int(row["epoch"])
        head = f"start ({trainer.init})" if epoch == 0 else f"epoch {epoch}: loss {row['train_loss']:.4f}"
        tqdm.write(f"{head}  val {row['val_loss']:.4f}  val PSNR {row['val_psnr']:.2f} dB{perplexity}")
