#!/usr/bin/env python3
"""A ceiling no user has: the shipped default's network trained on the simulator's clean stacks.

    .venv/bin/python benchmarks/supervised_ceiling.py [--work runs/supervised] [--steps-per-epoch N]

Issue 15 asks how far self-supervision is from supervision. This trains exactly the shipped
default's network (depth-aware mode, conditioned on each stack's estimated blur by depth, as at
inference) with its recipe and budget (20 epochs x 100 steps, batches of 16 windows of 64 x 64,
AdamW, warm-up then cosine decay, the same loss) on the same training plants (0-3 of
scripts/train_default_model.py's layout), but with the clean stack's windows as targets instead of
the observed ones. The epoch with the lowest loss on the validation plant (4) is kept. It is then
enhanced through `dqlr.enhance` like any model and scored, deepest third, on the validation plant
and the held-out plants of shipped_scores.py, next to the shipped default.

Benchmark only: never shipped, never described as self-supervised. Writes
results/supervised_ceiling.json/.md; the model stays in the work folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from shipped_scores import plants

import dqlr
from dqlr.config import Config
from dqlr.degradation import estimate_degradation
from dqlr.model.checkpoint import build_network, save_checkpoint
from dqlr.normalize import fit_normalization, normalize
from dqlr.simulation import simulate_dataset
from dqlr.training.losses import dqlr_loss
from dqlr.training.trainer import _lr_factor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


class CleanPairs:
    """Windows of an observed stack and the same windows of its clean stack (each normalised per
    stack), with the observed stack's estimated condition level at the window's first target."""

    def __init__(self, names: list[str], data: Path, config: Config, seed: int) -> None:
        self.observed, self.clean, self.levels = [], [], []
        settings = config.depth_aware
        for name in names:
            observed = dqlr.read_stack(data / f"{name}_observed.tif").data
            clean = dqlr.read_stack(data / f"{name}_clean.tif").data
            p = (config.data.percentile_low, config.data.percentile_high)
            self.observed.append(normalize(observed, fit_normalization(observed, *p)))
            self.clean.append(normalize(clean, fit_normalization(clean, *p)))
            blur = estimate_degradation(
                observed, reference_fraction=settings.reference_fraction, blur_only=True
            )
            self.levels.append(np.asarray(blur.blur_sigma_px, np.float32) / settings.condition_scale_px)
        self.length = config.model.predict_next + 2
        self.crop = config.data.crop
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets, levels = [], [], []
        for _ in range(count):
            i = int(self.rng.integers(len(self.observed)))
            depth, height, width = self.observed[i].shape
            z = int(self.rng.integers(0, depth - self.length + 1))
            y = int(self.rng.integers(0, height - self.crop + 1))
            x = int(self.rng.integers(0, width - self.crop + 1))
            window = np.s_[z : z + self.length, y : y + self.crop, x : x + self.crop]
            a, b = self.observed[i][window], self.clean[i][window]
            turns, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            a, b = (np.rot90(v, turns, axes=(1, 2)) for v in (a, b))
            if flip:
                a, b = a[:, :, ::-1], b[:, :, ::-1]
            inputs.append(np.ascontiguousarray(a))
            targets.append(np.ascontiguousarray(b[1:]))
            levels.append(self.levels[i][z + 1])
        return (
            torch.from_numpy(np.stack(inputs)).float(),
            torch.from_numpy(np.stack(targets)).float(),
            torch.tensor(levels, dtype=torch.float32),
        )


def train(work: Path, config: Config) -> Path:
    data = work / "data"
    if not (data / "split.json").exists():
        simulate_dataset(data, plants=6, seed=100)  # scripts/train_default_model.py's layout
    split = json.loads((data / "split.json").read_text())
    torch.manual_seed(config.train.seed)
    network = build_network(config)
    training = CleanPairs(split["train"], data, config, seed=config.train.seed)
    validation = CleanPairs(split["val"], data, config, seed=12345)
    val_batch = validation.sample(config.train.val_windows)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    best, best_path, step, started = float("inf"), work / "best.pt", 0, time.perf_counter()
    no_top = torch.zeros(config.train.batch_size, dtype=torch.bool)
    for epoch in range(config.train.epochs):
        network.train()
        for _ in range(config.train.steps_per_epoch):
            inputs, targets, levels = training.sample(config.train.batch_size)
            outputs, vq_loss, _ = network(inputs, no_top, levels)
            loss, _ = dqlr_loss(outputs, targets, vq_loss, config.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
        network.eval()
        with torch.no_grad():
            inputs, targets, levels = val_batch
            outputs, vq_loss, _ = network(inputs, torch.zeros(len(inputs), dtype=torch.bool), levels)
            val_loss = float(dqlr_loss(outputs, targets, vq_loss, config.loss)[0])
        minutes = (time.perf_counter() - started) / 60
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f} ({minutes:.1f} min)", flush=True)
        if val_loss < best:
            best = val_loss
            state = {
                "config": config.to_dict(),
                "model": network.state_dict(),
                "voxel_size": [1.0, 0.25, 0.25],
                "epoch": epoch + 1,
                "step": step,
                "metrics": {"val_loss": val_loss, "supervised": 1.0},
            }
            save_checkpoint(best_path, state)
    return best_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "supervised")
    parser.add_argument("--steps-per-epoch", type=int, help="less than the default's budget (a try)")
    parser.add_argument("--score-only", action="store_true", help="score the model already trained")
    args = parser.parse_args()
    config = Config().with_overrides({"mode": "depth-aware"})  # the shipped default's recipe
    if args.steps_per_epoch:
        config = config.with_overrides({"train.steps_per_epoch": args.steps_per_epoch})
    model_path = args.work / "best.pt" if args.score_only else train(args.work, config)
    model = dqlr.load_model(model_path)
    shipped = json.loads((RESULTS / "shipped_scores.json").read_text())
    rows = {}
    for plant, (observed, clean) in plants().items():
        result = dqlr.enhance(observed, model, device="cpu")
        deep = dqlr.evaluate(result, reference=clean)["result"]["thirds"]
        rows[plant] = {
            "input": shipped[plant]["input"],
            "default": shipped[plant]["depth-aware"],
            "supervised": {"psnr_deep": deep["psnr"]["deep"], "ssim_deep": deep["ssim"]["deep"]},
        }
        print(plant, rows[plant], flush=True)
    budget = f"{config.train.epochs} epochs x {config.train.steps_per_epoch} steps"
    # no wall time: the budget is the default's steps, and this machine's speed varies with its load
    record = {"budget": budget, "kept_epoch": model.meta.get("epoch"), "scores": rows}
    (RESULTS / "supervised_ceiling.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Supervised ceiling: the default's network trained on clean targets",
        "",
        "Command: `.venv/bin/python benchmarks/supervised_ceiling.py`. The shipped default's network, "
        f"config and budget ({budget}, batches of {config.train.batch_size}), trained on plants 0-3 with "
        f"the clean stacks as targets; epoch {model.meta.get('epoch')} kept (lowest validation loss). "
        "A reference no user has: benchmark only, never shipped. Deepest third, affine-fitted PSNR (dB) "
        "/ SSIM against the clean stack; input and default from `shipped_scores.json`.",
        "",
        "| plant | input | dqlr default (self-supervised) | supervised ceiling | default - ceiling |",
        "|---|---|---|---|---|",
        *(
            f"| {p} | {r['input']['psnr_deep']:.2f} / {r['input']['ssim_deep']:.3f} | "
            f"{r['default']['psnr_deep']:.2f} / {r['default']['ssim_deep']:.3f} | "
            f"{r['supervised']['psnr_deep']:.2f} / {r['supervised']['ssim_deep']:.3f} | "
            f"{r['default']['psnr_deep'] - r['supervised']['psnr_deep']:+.2f} dB |"
            for p, r in rows.items()
        ),
    ]
    (RESULTS / "supervised_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
