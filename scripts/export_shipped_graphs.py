#!/usr/bin/env python3
"""Write the ONNX step graph of every shipped model beside its weights (dqlr_*.onnx).

    .venv/bin/python scripts/export_shipped_graphs.py [WEIGHTS.pt ...]   (default: the shipped ones)

Enhancement on a CPU runs the network on ONNX Runtime (dqlr.model.graph). A model without a
graph is exported when first used (about 1.5 s); shipping the graphs saves every run that time.
Each graph records the SHA-256 of its weights file and is ignored once the weights change, so run
this again after retraining or editing a shipped model. tests/test_engines.py checks the shipped
graphs against their weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dqlr.atomic import write_bytes
from dqlr.model.checkpoint import SHIPPED, load_model, shipped_model_path
from dqlr.model.graph import export_step_graph


def main() -> None:
    for weights in sys.argv[1:] or [shipped_model_path(name) for name in SHIPPED]:
        model = load_model(weights)
        target = Path(weights).with_suffix(".onnx")
        write_bytes(target, export_step_graph(model.network, model.meta["sha256"]))
        print(f"{target.name}: {target.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
