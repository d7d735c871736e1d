#!/usr/bin/env python3
"""Does the dictionary earn its place? Each model against the same recipe without quantization.

    .venv/bin/python benchmarks/dictionary.py [--ablation runs/default/depth-aware-noquant/best.pt]

Issue 15 asks, where the quantizer does not raise the score, to say so and to find where it does.
Two pairs, each the same recipe with and without the dictionary: the shipped depth-aware default
against its recipe without quantization (a run of `scripts/train_default_model.py --only
depth-aware-noquant`, not shipped; the pair is skipped without it), and the shipped paper-mode
model against the shipped `noquant` (its ablation). Stacks: the test plant and the other-optics
plant of benchmarks/quality.py, and the eight out-of-domain cases of benchmarks/out_of_domain.py
(stacks the simulator does not make by default). Scores: affine-fitted PSNR / SSIM on the most
degraded third, and on the top slice. For the quantized models also how far the stack's codes lie
from the dictionary relative to the model's validation stack (the familiarity check of
`dqlr enhance`, which warns from 1.45x): a check that only a model with a dictionary can make.
Writes benchmarks/results/dictionary.json and .md.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from harness.cases import cases
from quality import other_optics_plant

import dqlr
from dqlr.config import EnhanceOptions
from dqlr.evaluation.metrics import psnr_affine, ssim_affine
from dqlr.inference.enhance import UNFAMILIAR_RATIO, model_quantization_error, plan_enhancement
from dqlr.model.checkpoint import LoadedModel, load_model
from dqlr.model.familiarity import METRIC

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VOXEL = (1.0, 0.25, 0.25)


def stacks() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]]:
    """name -> (observed, clean, voxel size, most degraded third)."""
    test = dqlr.simulate(seed=105)
    deep = np.arange(test.observed.shape[0] - test.observed.shape[0] // 3, test.observed.shape[0])
    out = {
        "test plant": (test.observed, test.clean, VOXEL, deep),
        "other optics": (*other_optics_plant(), VOXEL, deep),
    }
    for case in cases():
        out[case.name] = (case.observed, case.clean, case.voxel_size, case.worst_third())
    return out


def familiarity(model: LoadedModel, stack: np.ndarray, voxel: tuple[float, float, float]) -> float | None:
    """The stack's code distance over the model's own reference (None: no dictionary)."""
    reference = float((model.meta.get("metrics") or {}).get(METRIC) or 0.0)
    if not model.config.model.quantize or reference <= 0:
        return None
    plan = plan_enhancement(stack, model, EnhanceOptions(voxel_size=voxel), voxel)
    error = model_quantization_error(model, plan.views[0], plan.norm)
    return None if error is None else error / reference


def scores(result: np.ndarray, clean: np.ndarray, slices: np.ndarray) -> dict[str, float]:
    return {
        "psnr": float(np.mean([psnr_affine(result[z], clean[z]) for z in slices])),
        "ssim": float(np.mean([ssim_affine(result[z], clean[z]) for z in slices])),
        "psnr_top": psnr_affine(result[0], clean[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--ablation", type=Path, default=ROOT / "runs" / "default" / "depth-aware-noquant" / "best.pt"
    )
    args = parser.parse_args()
    pairs = {"paper": ("paper", "noquant")}
    if args.ablation.exists():
        pairs = {"depth-aware (default)": ("depth-aware", str(args.ablation)), **pairs}
    models = {name: load_model(name, device="cpu") for pair in pairs.values() for name in pair}
    rows: dict[str, dict] = {}
    for stack_name, (observed, clean, voxel, worst) in stacks().items():
        row: dict[str, dict] = {}
        for pair, (with_q, without_q) in pairs.items():
            got = {}
            for key, name in (("with", with_q), ("without", without_q)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = dqlr.enhance(observed, models[name], voxel_size=voxel)
                got[key] = scores(result, clean, worst)
            got["familiarity"] = familiarity(models[with_q], observed, voxel)
            row[pair] = got
        rows[stack_name] = row
        print(stack_name, json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dictionary.json").write_text(
        json.dumps(
            {"ablation": str(args.ablation) if args.ablation.exists() else None, "rows": rows}, indent=1
        )
    )
    lines = [
        "# Does the dictionary earn its place?",
        "",
        "Command: `.venv/bin/python benchmarks/dictionary.py`. Each model against the same recipe "
        "without quantization: the shipped depth-aware default against a run of its recipe without "
        "quantization (`scripts/train_default_model.py --only depth-aware-noquant`, not shipped), and "
        "the shipped paper-mode model against the shipped `noquant`. Affine-fitted PSNR (dB) / SSIM "
        "on the most degraded third of each stack (deepest third of the plants); 'top' is the PSNR "
        "of slice 0. 'Codes' is how far the stack's codes lie from the dictionary over the model's "
        f"validation stack (`dqlr enhance` warns from {UNFAMILIAR_RATIO}x); only a model with a "
        "dictionary can tell.",
        "",
    ]
    for pair in pairs:
        lines += [
            f"## {pair}",
            "",
            "| stack | with dictionary | without | difference (dB) | top with / without | codes |",
            "|---|---|---|---|---|---|",
        ]
        wins = 0
        for stack_name, row in rows.items():
            got = row[pair]
            a, b = got["with"], got["without"]
            wins += a["psnr"] > b["psnr"]
            codes = "-" if got["familiarity"] is None else f"{got['familiarity']:.2f}x"
            lines.append(
                f"| {stack_name} | {a['psnr']:.2f} / {a['ssim']:.3f} | {b['psnr']:.2f} / {b['ssim']:.3f} "
                f"| {a['psnr'] - b['psnr']:+.2f} | {a['psnr_top']:.2f} / {b['psnr_top']:.2f} | {codes} |"
            )
        lines += ["", f"With the dictionary the score is higher on {wins} of {len(rows)} stacks.", ""]
    (RESULTS / "dictionary.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
