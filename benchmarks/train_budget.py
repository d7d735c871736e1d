#!/usr/bin/env python3
"""What the shipped default's recipe reaches when its training must fit a short budget.

    .venv/bin/python benchmarks/train_budget.py [--epochs 5] [--set key=value ...] [--work runs/budget]

Issue 14 asks for the default model to train in at most 10 minutes on 2 CPU cores with the same
quality. This trains the recipe (depth-aware; 20 epochs of 100 steps, or fewer so that its
learning-rate schedule ends sooner) on the same plants (runs/default/data, made by
scripts/train_default_model.py), with any other setting changed by `--set` (e.g.
train.learning_rate=0.004), as a user's `dqlr train` runs (bf16 steps where the CPU has native
bf16), then scores the validation plant's deepest third against the shipped default, which was
trained in float32. The test plant is not used.
Each run adds its row to benchmarks/results/train_budget.json (a run with the same settings
replaces its row) and the table in train_budget.md is written from all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import dqlr
from dqlr.config import Config, RunOptions
from dqlr.runtime import mixed_precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = "shipped default (20 epochs)"


def deep_scores(model: object, observed: object, clean: object) -> dict[str, float]:
    third = dqlr.evaluate(dqlr.enhance(observed, model, device="cpu"), reference=clean)["result"]["thirds"]
    return {
        "psnr_deep": third["psnr"]["deep"],
        "ssim_deep": third["ssim"]["deep"],
        "psnr_top": third["psnr"]["top"],
    }


def run_name(epochs: int, settings: dict[str, str]) -> str:
    return ", ".join([f"{epochs} epochs", *[f"{k}={v}" for k, v in sorted(settings.items())]])


def write_table(rows: dict[str, dict]) -> str:
    shipped = rows[SHIPPED]
    lines = [
        "# The default's recipe in a short training budget",
        "",
        "Command: `.venv/bin/python benchmarks/train_budget.py --epochs N [--set key=value]` "
        "(2 CPU cores; one row per run, each measured once). The shipped default's recipe "
        "(depth-aware) on the same training plants, with N epochs of 100 steps (the shipped model: 20; "
        "the schedule ends with the run) and the settings named; validation plant, deepest third, "
        "affine-fitted PSNR (dB) / SSIM. Training minutes include the set-up (the degradation "
        "estimates) and each epoch's validation.",
        "",
        "| model | training (min) | PSNR deep | difference | SSIM deep | PSNR top |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        minutes = "-" if row.get("train_minutes") is None else f"{row['train_minutes']:.1f}"
        label = f"{name} ({row['note']})" if row.get("note") else name
        lines.append(
            f"| {label} | {minutes} | {row['psnr_deep']:.2f} | "
            f"{row['psnr_deep'] - shipped['psnr_deep']:+.2f} | {row['ssim_deep']:.3f} "
            f"| {row['psnr_top']:.2f} |"
        )
    lines += [
        "",
        "Issue 14's target: the same quality (within 0.1 dB on the deepest third) in at most 10 minutes.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "budget")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    data = ROOT / "runs" / "default" / "data"
    split = json.loads((data / "split.json").read_text())
    train_files = [data / f"{name}_observed.tif" for name in split["train"]]
    val = split["val"][0]
    overrides = {k: json.loads(v) for k, v in settings.items()}
    config = Config().with_overrides({"mode": "depth-aware", "train.epochs": args.epochs, **overrides})
    name = run_name(args.epochs, settings)
    run = args.work / name.replace(", ", "_").replace(" ", "-").replace("=", "-")
    started = time.perf_counter()
    dqlr.train(
        train_files, run, config, val_stack=data / f"{val}_observed.tif", run=RunOptions(progress=False)
    )
    minutes = (time.perf_counter() - started) / 60
    precision = "bf16 mixed-precision" if mixed_precision(torch.device("cpu")) else "float32"
    observed = dqlr.read_stack(data / f"{val}_observed.tif").data
    clean = dqlr.read_stack(data / f"{val}_clean.tif").data
    path = RESULTS / "train_budget.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    rows = result.get("runs", {})
    if SHIPPED not in rows:
        rows[SHIPPED] = {**deep_scores("depth-aware", observed, clean), "train_minutes": None}
    rows[name] = {
        **deep_scores(str(run / "best.pt"), observed, clean),
        "train_minutes": minutes,
        "steps": args.epochs * config.train.steps_per_epoch,
        "machine": f"{os.cpu_count()} cores",
        "dqlr": dqlr.__version__,
        "note": f"{precision} steps",
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": rows}, indent=2))
    table = write_table(rows)
    (RESULTS / "train_budget.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
