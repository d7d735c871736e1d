#!/usr/bin/env python3
"""Score the shipped models on the validation plant, the test plant and the other-optics plant.

    .venv/bin/python benchmarks/shipped_scores.py [--out FILE.json] [--compare OLD.json]

A quick check that a change to the code (not to the weights) moves no measured number: the plants
are those of benchmarks/quality.py (seeds 104 and 105 of the six-plant layout, and seed 999 with
other optics), every shipped model enhances them, and the deepest-third PSNR / SSIM are written as
JSON. With --compare, each score is set against an earlier run and the largest change printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dqlr

RESULTS = Path(__file__).resolve().parent / "results"
PLANTS = {"validation plant": {"seed": 104}, "test plant": {"seed": 105}}
SHIPPED = ("paper", "noquant", "depth-aware")


def plants() -> dict[str, tuple]:
    from dqlr.simulation import Optics

    made = {name: dqlr.simulate(**kwargs) for name, kwargs in PLANTS.items()}
    optics = Optics(psf_xy_deep_um=1.2, psf_z_deep_um=3.0, psf_growth=1.0, photons_top=60.0)
    made["other optics"] = dqlr.simulate(seed=999, optics=optics, noise=1.0)
    return {name: (plant.observed, plant.clean) for name, plant in made.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=RESULTS / "shipped_scores.json")
    parser.add_argument("--compare", type=Path, help="an earlier output of this script")
    args = parser.parse_args()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for plant, (observed, clean) in plants().items():
        scores[plant] = {}
        for name in ("input", *SHIPPED):
            result = observed if name == "input" else dqlr.enhance(observed, name, device="cpu")
            deep = dqlr.evaluate(result, reference=clean)["result"]["thirds"]
            scores[plant][name] = {"psnr_deep": deep["psnr"]["deep"], "ssim_deep": deep["ssim"]["deep"]}
            print(f"{plant:>16} {name:>12}: {scores[plant][name]}", flush=True)
    args.out.write_text(json.dumps(scores, indent=2) + "\n")
    if args.compare:
        old = json.loads(args.compare.read_text())
        worst = max(
            abs(scores[p][m][k] - old[p][m][k]) for p in scores for m in scores[p] for k in scores[p][m]
        )
        print(f"largest change against {args.compare}: {worst:.4f}")


if __name__ == "__main__":
    main()
