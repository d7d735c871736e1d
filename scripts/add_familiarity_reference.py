#!/usr/bin/env python3
"""Give the shipped models the familiarity reference that models trained now record themselves.

    .venv/bin/python scripts/add_familiarity_reference.py

Training now saves `val_quant_error` (dqlr.model.familiarity) with every model: how far the codes
of its validation stack lie from its dictionary. The shipped models were trained before; this
measures the same number on their validation plant (plant 4 of scripts/train_default_model.py,
seed 104) and writes it into their metrics. Weights, config and everything else stay as they were.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from dqlr.atomic import write_bytes
from dqlr.inference.enhance import fit_stack_normalization
from dqlr.model.checkpoint import SHIPPED, load_model, shipped_model_path
from dqlr.model.familiarity import METRIC, quantization_error
from dqlr.simulation import simulate_plant

VALIDATION_SEED = 104  # scripts/train_default_model.py: SEED 100, plant 4 validates


def main() -> None:
    plant = simulate_plant(seed=VALIDATION_SEED)
    for name in SHIPPED:
        path = Path(shipped_model_path(name))
        model = load_model(path)
        error = quantization_error(
            model.network, plant.observed, fit_stack_normalization(plant.observed, model)
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if error is None:
            print(f"{name}: no quantizer, nothing to add")
            continue
        state["metrics"] = {**state["metrics"], METRIC: error}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(path, buffer.getvalue())
        print(f"{name}: {METRIC} = {error:.4f}")


if __name__ == "__main__":
    main()
