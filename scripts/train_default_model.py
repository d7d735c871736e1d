#!/usr/bin/env python3
"""How the shipped models were made: simulate the six-plant layout, train with the default config.

    .venv/bin/python scripts/train_default_model.py [--work runs/default] [--only default|noquant]

Trains the paper-faithful DQLR (default config) and its no-quantization ablation with the same
recipe and budget on plants 0-3, validating on plant 4 (plant 5 is left for tests), and exports
their best checkpoints (without optimiser state) into src/dqlr/weights/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dqlr.checkpoint import export_model
from dqlr.config import Config
from dqlr.simulate import simulate_dataset
from dqlr.train import train

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "dqlr" / "weights"
SEED = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--only", choices=["default", "noquant"])
    args = parser.parse_args()
    data = args.work / "data"
    if not (data / "split.json").exists():
        simulate_dataset(data, plants=6, seed=SEED)
    split = json.loads((data / "split.json").read_text())
    train_files = [data / f"{name}_observed.tif" for name in split["train"]]
    val_file = data / f"{split['val'][0]}_observed.tif"
    variants = {"default": Config(), "noquant": Config().with_overrides({"model.quantize": False})}
    timings = {}
    for name, config in variants.items():
        if args.only and name != args.only:
            continue
        run = args.work / name
        started = time.perf_counter()
        resume = (run / "last.pt").exists()
        result = train(train_files, run, None if resume else config, val_stack=val_file, resume=resume)
        timings[name] = time.perf_counter() - started
        export_model(result.best, WEIGHTS / f"dqlr_{name}.pt")
        print(f"{name}: {timings[name] / 60:.1f} min, exported {WEIGHTS / f'dqlr_{name}.pt'}")
    (args.work / "timings.json").write_text(json.dumps(timings, indent=2))


if __name__ == "__main__":
    main()
