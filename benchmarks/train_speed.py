#!/usr/bin/env python3
"""Training throughput of the default config on this machine (windows/s, seconds per epoch).

    .venv/bin/python benchmarks/train_speed.py [--steps 40]

Writes benchmarks/results/train_speed.json and .md. If the shipped model's training run is at
runs/default/default/metrics.csv, its measured wall time is reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch

from dqlr.config import Config, RunOptions
from dqlr.model import DQLR
from dqlr.normalize import fit_normalization
from dqlr.runtime import fast_math, pick_device
from dqlr.simulation import simulate_plant
from dqlr.training.data import WindowSampler
from dqlr.training.losses import dqlr_loss

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def measure(config: Config, steps: int, device: torch.device) -> dict[str, float]:
    with fast_math():
        return _measure(config, steps, device)


def _measure(config: Config, steps: int, device: torch.device) -> dict[str, float]:
    stacks = [simulate_plant(seed=s).observed for s in range(2)]
    norms = [fit_normalization(s) for s in stacks]
    sampler = WindowSampler(stacks, norms, config.model.predict_next + 1, config.data.crop, seed=0)
    network = DQLR(config.model).to(device, memory_format=torch.channels_last)  # as the Trainer
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.train.learning_rate)
    from dqlr.runtime import mixed_precision  # here: --parts-only also runs on older code

    timings = {"sample": 0.0, "step": 0.0}
    precision = mixed_precision(device)  # as the Trainer
    for step in range(steps + 3):
        started = time.perf_counter()
        windows, tops = sampler.sample(config.train.batch_size)
        windows, tops = windows.to(device), tops.to(device)
        sampled = time.perf_counter()
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            outputs, vq_loss, _ = network(windows, tops)
        loss, _ = dqlr_loss(outputs, windows[:, 1:], vq_loss, config.loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 3:  # the first steps include k-means initialisation and warm-up
            timings["sample"] += sampled - started
            timings["step"] += time.perf_counter() - sampled
    total = timings["sample"] + timings["step"]
    windows_per_s = steps * config.train.batch_size / total
    return {
        "windows_per_second": windows_per_s,
        "steps_per_second": steps / total,
        "seconds_per_epoch": config.train.steps_per_epoch / (steps / total),
        "predicted_training_minutes": config.train.epochs
        * config.train.steps_per_epoch
        / (steps / total)
        / 60,
        "fraction_in_sampler": timings["sample"] / total,
    }


TRAINER_VARIANTS = {  # name: (channels-last layout, bf16 autocast, next batch made in a thread)
    "before: float32, contiguous layout": (False, False, False),
    "channels-last layout": (True, False, False),
    "channels-last layout, bf16 autocast (the Trainer on a CPU with native bf16)": (True, True, False),
    "the same, next batch made in a second thread during the step (tried, not kept)": (True, True, True),
}


def trainer_step_seconds(config: Config, steps: int) -> dict[str, float | None]:
    """Seconds per step of the real Trainer (the shipped default's recipe: half of each batch
    depth-aware pairs), on the simulated plants of the other measure; setup and validation excluded.

    Also what each of the Trainer's speed-ups buys (TRAINER_VARIANTS), and a loop that makes the
    next batch in a second thread, as the Trainer did for a while. Each variant gets its own
    Trainer; a bf16 variant is None on a CPU without native bf16 (there the Trainer stays float32).
    """
    from concurrent.futures import ThreadPoolExecutor

    from dqlr.runtime import mixed_precision, own_random_streams
    from dqlr.training.trainer import Trainer

    stacks = [simulate_plant(seed=s).observed for s in range(3)]
    seconds: dict[str, float | None] = {}
    for name, (channels_last, amp, ahead) in TRAINER_VARIANTS.items():
        if amp and mixed_precision(torch.device("cpu")) is None:
            seconds[name] = None
            continue
        options = RunOptions(progress=False, device="cpu", amp=amp)
        trainer = Trainer(config, stacks[:2], stacks[2], options)
        if not channels_last:
            trainer.network.to(memory_format=torch.contiguous_format)
        trainer.network.train()
        with fast_math(), own_random_streams(seed=0):
            for _ in range(3):  # k-means initialisation and warm-up
                trainer._step()
            started = time.perf_counter()
            if ahead:
                with ThreadPoolExecutor(max_workers=1) as pool:
                    upcoming = pool.submit(trainer._batch)
                    for step in range(steps):
                        batch = upcoming.result()
                        if step + 1 < steps:
                            upcoming = pool.submit(trainer._batch)
                        trainer._step(batch)
            else:
                for _ in range(steps):
                    trainer._step()
            seconds[name] = (time.perf_counter() - started) / steps
    return seconds


def batch_seconds(config: Config, batches: int) -> float:
    """Seconds to make one training batch of the recipe (windows and degraded pairs), alone."""
    from dqlr.training.trainer import Trainer

    stacks = [simulate_plant(seed=s).observed for s in range(3)]
    trainer = Trainer(config, stacks[:2], stacks[2], RunOptions(progress=False, device="cpu"))
    trainer._batch()  # the tissue centres are found on the first
    started = time.perf_counter()
    for _ in range(batches):
        trainer._batch()
    return (time.perf_counter() - started) / batches


def loss_milliseconds(config: Config, repeats: int) -> float:
    """Milliseconds for the training loss of one batch of the recipe, forward and backward, alone."""
    generator = torch.Generator().manual_seed(0)
    shape = (config.train.batch_size, config.model.predict_next + 1, config.data.crop, config.data.crop)
    outputs = torch.rand(shape, generator=generator).requires_grad_(True)
    targets = torch.rand(shape, generator=generator)
    for _ in range(3):  # warm-up
        dqlr_loss(outputs, targets, torch.zeros(()), config.loss)[0].backward()
    started = time.perf_counter()
    for _ in range(repeats):
        dqlr_loss(outputs, targets, torch.zeros(()), config.loss)[0].backward()
    return 1000 * (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--parts-only",
        action="store_true",
        help="print the seconds per batch and the loss's milliseconds of the recipe, and stop",
    )
    parser.add_argument(
        "--batch-before",
        type=float,
        help="seconds per batch that --parts-only printed for the code before a change, to report",
    )
    parser.add_argument(
        "--loss-before",
        type=float,
        help="the loss's milliseconds that --parts-only printed for the code before a change, to report",
    )
    args = parser.parse_args()
    default = Config().with_overrides({"mode": "depth-aware"})
    if args.parts_only:
        parts = {
            "seconds_per_batch": batch_seconds(default, args.steps),
            "loss_milliseconds": loss_milliseconds(default, args.steps),
        }
        print(json.dumps(parts))
        return
    config = Config()
    device = pick_device(args.device)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {
            "batch_size": config.train.batch_size,
            "crop": config.data.crop,
            "epochs": config.train.epochs,
            "steps_per_epoch": config.train.steps_per_epoch,
            "base_channels": config.model.base_channels,
            "latent_channels": config.model.latent_channels,
        },
        **measure(config, args.steps, device),
    }
    variants = trainer_step_seconds(default, args.steps)
    kept = [v for name, v in variants.items() if "not kept" not in name and v is not None]
    per_step = kept[-1]
    result["default_model_seconds_per_batch"] = batch_seconds(default, args.steps)
    result["default_model_seconds_per_batch_before"] = args.batch_before
    result["default_model_loss_milliseconds"] = loss_milliseconds(default, args.steps)
    result["default_model_loss_milliseconds_before"] = args.loss_before
    result["default_model_trainer_seconds_per_step"] = per_step
    result["default_model_trainer_variants"] = variants
    result["default_model_predicted_training_minutes"] = (
        per_step * default.train.steps_per_epoch * default.train.epochs / 60
    )
    log = ROOT / "runs" / "default" / "default" / "metrics.csv"
    if log.is_file():
        rows = list(csv.DictReader(log.open()))
        result["shipped_model_training_minutes"] = sum(float(r["seconds"]) for r in rows) / 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(result, indent=2))
    before = "" if args.batch_before is None else f" --batch-before {args.batch_before:.3f}"
    before += "" if args.loss_before is None else f" --loss-before {args.loss_before:.1f}"
    lines = [
        "# Training speed (default config, and the shipped default's depth-aware recipe)",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} threads.",
        f"Command: `.venv/bin/python benchmarks/train_speed.py --steps {args.steps}{before}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| windows per second | {result['windows_per_second']:.1f} |",
        f"| seconds per epoch ({config.train.steps_per_epoch} steps of {config.train.batch_size}) "
        f"| {result['seconds_per_epoch']:.1f} |",
        f"| predicted time for the default {config.train.epochs} epochs (min) "
        f"| {result['predicted_training_minutes']:.1f} |",
        f"| share of time in the window sampler | {result['fraction_in_sampler']:.0%} |",
        f"| the shipped default's recipe (depth-aware, the real Trainer): seconds per step "
        f"| {per_step:.2f} |",
        f"| the shipped default's recipe: predicted time for {default.train.epochs} epochs "
        f"(steps only, min) | {result['default_model_predicted_training_minutes']:.1f} |",
    ]
    if "shipped_model_training_minutes" in result:
        lines.append(
            "| wall time of the paper-mode training run behind dqlr_paper.pt, "
            "on a CPU shared with other jobs (min) "
            f"| {result['shipped_model_training_minutes']:.1f} |"
        )
    lines.append(
        f"| the shipped default's recipe: seconds to make one batch (windows and degraded pairs) "
        f"| {result['default_model_seconds_per_batch']:.3f} |"
    )
    if args.batch_before is not None:
        lines.append(
            "| the same before the pairs' noise was drawn for the crop alone and their blur ran "
            f"unpadded in float32 (`--parts-only` on the code before) | {args.batch_before:.3f} |"
        )
    lines.append(
        "| the shipped default's recipe: milliseconds for the loss of one batch (forward and backward) "
        f"| {result['default_model_loss_milliseconds']:.1f} |"
    )
    if args.loss_before is not None:
        lines.append(
            "| the same before the SSIM term blurred all slices and moments in one filter "
            f"(`--parts-only` on the code before) | {args.loss_before:.1f} |"
        )
    first = list(variants.values())[0]

    def row(name: str, value: float | None) -> str:
        if value is None or first is None:
            return f"| {name} | - (no native bf16 on this CPU) | - |"
        return f"| {name} | {value:.2f} | {first / value:.2f}x |"

    lines += [
        "",
        "What each of the Trainer's speed-ups buys (the shipped default's recipe, seconds per step "
        "with the batch made in it; each variant a Trainer of its own, one after the other):",
        "",
        "| variant | seconds per step | speed-up |",
        "|---|---|---|",
        *[row(name, value) for name, value in variants.items()],
    ]
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
