#!/usr/bin/env python3
"""Write the ONNX step graph and the description of every shipped model beside its weights
(dqlr_*.onnx, dqlr_*.json).

    .venv/bin/python scripts/export_shipped_graphs.py [WEIGHTS.pt ...]   (default: the shipped ones)

Enhancement on a CPU runs the network on ONNX Runtime (dqlr.model.graph). A model without a
graph is exported when first used (about 1.5 s); shipping the graphs saves every run that time.
The description (all of the checkpoint but its weights) lets a CPU enhance without importing
torch (1.7 s). Both record the SHA-256 of their weights file and are ignored once the weights
change, so run this again after retraining or editing a shipped model. tests/test_engines.py
checks the shipped files against their weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dqlr.atomic import write_bytes
from dqlr.model.checkpoint import SHIPPED, describe_weights, load_model, shipped_model_path
from dqlr.model.graph import export_step_graph


def main() -> None:
    for weights in sys.argv[1:] or [shipped_model_path(name) for name in SHIPPED]:
        model = load_model(weights, lightweight=False)
        target = Path(weights).with_suffix(".onnx")
        write_bytes(target, export_step_graph(model.network, model.meta["sha256"]))
        print(f"{target.name}: {target.stat().st_size / 1e6:.2f} MB")
        description = Path(weights).with_suffix(".json")
        write_bytes(description, (json.dumps(describe_weights(weights), indent=1) + "\n").encode())
        print(f"{description.name}: {description.stat().st_size / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
