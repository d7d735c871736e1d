#!/usr/bin/env python3
"""What the shipped default's recipe reaches when its training must fit a short budget.

    .venv/bin/python benchmarks/train_budget.py [--epochs 5] [--work runs/budget]

Issue 14 asks for the default model to train in at most 10 minutes on 2 CPU cores with the same
quality. The recipe (depth-aware, 20 epochs of 100 steps) takes about 40 minutes here
(results/train_speed.md: 1.21 s per step). This trains the same recipe on the same plants
(runs/default/data, made by scripts/train_default_model.py) with fewer epochs, so that its
learning-rate schedule ends within the budget, and scores the validation plant's deepest third
against the shipped default. The test plant is not used. Writes benchmarks/results/train_budget.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import dqlr
from dqlr.config import Config, RunOptions

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def deep_scores(model: object, observed: object, clean: object) -> dict[str, float]:
    third = dqlr.evaluate(dqlr.enhance(observed, model, device="cpu"), reference=clean)["result"]["thirds"]
    return {
        "psnr_deep": third["psnr"]["deep"],
        "ssim_deep": third["ssim"]["deep"],
        "psnr_top": third["psnr"]["top"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "budget")
    args = parser.parse_args()
    data = ROOT / "runs" / "default" / "data"
    split = json.loads((data / "split.json").read_text())
    train_files = [data / f"{name}_observed.tif" for name in split["train"]]
    val = split["val"][0]
    config = Config().with_overrides({"mode": "depth-aware", "train.epochs": args.epochs})
    run = args.work / f"depth-aware-{args.epochs}-epochs"
    started = time.perf_counter()
    dqlr.train(
        train_files, run, config, val_stack=data / f"{val}_observed.tif", run=RunOptions(progress=False)
    )
    minutes = (time.perf_counter() - started) / 60
    observed = dqlr.read_stack(data / f"{val}_observed.tif").data
    clean = dqlr.read_stack(data / f"{val}_clean.tif").data
    shipped = deep_scores("depth-aware", observed, clean)
    budget = deep_scores(str(run / "best.pt"), observed, clean)
    result = {
        "machine": f"{os.cpu_count()} cores",
        "epochs": args.epochs,
        "steps": args.epochs * config.train.steps_per_epoch,
        "train_minutes": minutes,
        "validation_plant": {"shipped default (20 epochs)": shipped, f"{args.epochs} epochs": budget},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_budget.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# The default's recipe in a short training budget",
        "",
        f"Command: `.venv/bin/python benchmarks/train_budget.py --epochs {args.epochs}` ({os.cpu_count()} "
        "CPU cores). The shipped default's recipe (depth-aware) on the same training plants, with "
        f"{args.epochs} epochs of {config.train.steps_per_epoch} steps instead of 20 (its schedule "
        "ends with the run); validation plant, deepest third, affine-fitted PSNR (dB) / SSIM.",
        "",
        "| model | training (min) | PSNR deep | SSIM deep | PSNR top |",
        "|---|---|---|---|---|",
        f"| shipped default (20 epochs) | - | {shipped['psnr_deep']:.2f} | {shipped['ssim_deep']:.3f} "
        f"| {shipped['psnr_top']:.2f} |",
        f"| {args.epochs} epochs | {minutes:.1f} | {budget['psnr_deep']:.2f} | {budget['ssim_deep']:.3f} "
        f"| {budget['psnr_top']:.2f} |",
        "",
        f"The short run gives {budget['psnr_deep'] - shipped['psnr_deep']:+.2f} dB on the deepest third "
        "(issue 14: the same quality, within 0.1 dB, in at most 10 minutes).",
        "",
    ]
    (RESULTS / "train_budget.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
