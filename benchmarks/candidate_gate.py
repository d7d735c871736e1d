#!/usr/bin/env python3
"""Everything a training candidate must pass before it replaces the shipped default (issue 15).

    .venv/bin/python benchmarks/candidate_gate.py --candidate runs/budget/RUN/best.pt [--label TEXT]
        [--held-out]

A higher PSNR on the validation plant is not enough: the default must not lose the trust the
out-of-domain work gave it. For the shipped default and the candidate, one pass each:
- the validation plant (seed 104) and, with --held-out (once, for a candidate that won there), the
  test plant and the other-optics plant of shipped_scores.py: deepest and top third;
- the eight cases of out_of_domain.py (stacks our simulator does not make by default), their most
  degraded third, against Gaussian smoothing with the setting tuned on the validation plant (a model
  below plain smoothing there draws structure that is not in the stack), and the notes the user sees
  (the familiarity note and the guard's);
- the familiarity ratios of check_calibration.py (code distance over the model's own reference) on
  simulated SAM stacks and those cases: the warning at dqlr.inference.enhance.UNFAMILIAR_RATIO must
  still tell them apart.
Adds the candidate to results/candidate_gate.json (keyed by --label) and writes results/candidate_gate.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from both_directions import GUARD_NOTE
from both_directions import scores as plant_thirds
from check_calibration import familiarity
from harness.cases import cases
from out_of_domain import MODEL_PIXEL_UM, tuned_settings, with_notes
from out_of_domain import scores as case_scores
from shipped_scores import plants

import dqlr
from dqlr.evaluation.baselines import gaussian_smoothing
from dqlr.inference.enhance import UNFAMILIAR_RATIO

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FAMILIARITY_NOTE = "unlike the model's training data"
SAM = "SAM"  # familiarity rows of simulated SAM stacks start with this


def plant_scores(model: Any, held_out: bool) -> dict[str, dict[str, float]]:
    out = {}
    for plant, (observed, clean) in plants().items():
        if plant == "validation plant" or held_out:
            out[plant] = plant_thirds(observed, clean, model, both=False)
            print(plant, out[plant], flush=True)
    return out


def case_rows(model: Any) -> dict[str, dict[str, Any]]:
    smooth_sigma = tuned_settings()["gaussian"]["sigma_px"]
    rows = {}
    for case in cases():
        worst = case.worst_third()
        result, notes = with_notes(dqlr.enhance, case.observed, model, voxel_size=case.voxel_size)
        smoothed = gaussian_smoothing(case.observed, smooth_sigma * MODEL_PIXEL_UM / case.voxel_size[2])
        rows[case.name] = {
            **case_scores(result, case, worst),
            "smoothing_psnr": case_scores(smoothed, case, worst)["psnr"],
            "familiarity_note": any(FAMILIARITY_NOTE in n for n in notes),
            "guard_note": any(GUARD_NOTE in n for n in notes),
        }
        print(case.name, rows[case.name], flush=True)
    return rows


def separation(ratios: dict[str, float]) -> dict[str, Any]:
    """Which stacks the warning flags, and the widest gap between SAM stacks and the others."""
    sam = max(v for k, v in ratios.items() if k.startswith(SAM))
    return {
        "highest_sam": sam,
        "flagged": [k for k, v in ratios.items() if v > UNFAMILIAR_RATIO],
        "above_every_sam": [k for k, v in ratios.items() if not k.startswith(SAM) and v > sam],
    }


def gate(model: Any, held_out: bool) -> dict[str, Any]:
    ratios = familiarity(model)
    return {
        "plants": plant_scores(model, held_out),
        "cases": case_rows(model),
        "familiarity": ratios,
        "separation": separation(ratios),
    }


def write_table(result: dict[str, dict]) -> str:
    labels = list(result)
    lines = [
        "# Candidates for the default, against the shipped one",
        "",
        "Command: `.venv/bin/python benchmarks/candidate_gate.py --candidate RUN/best.pt --label TEXT "
        "[--held-out]`. One pass each. Plants of shipped_scores.py, affine-fitted PSNR (dB) / SSIM "
        "against the clean stack; the test and other-optics plants only for a candidate that won on "
        "the validation plant (--held-out).",
        "",
        "| model | plant | PSNR deep | SSIM deep | PSNR top |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        for plant, row in result[label]["plants"].items():
            lines.append(
                f"| {label} | {plant} | {row['psnr_deep']:.2f} | {row['ssim_deep']:.3f} "
                f"| {row['psnr_top']:.2f} |"
            )
    lines += [
        "",
        "## Stacks our simulator does not make by default",
        "",
        "Cases of out_of_domain.md, most degraded third, PSNR (dB) / SSIM; in brackets the difference "
        "to Gaussian smoothing tuned on the validation plant (below 0: the model does worse than plain "
        "smoothing); F: the familiarity note was shown, G: the guard replaced slices.",
        "",
        "| case | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in result[labels[0]]["cases"]:
        cells = []
        for label in labels:
            row = result[label]["cases"][name]
            flags = "".join(f for f, on in (("F", row["familiarity_note"]), ("G", row["guard_note"])) if on)
            cells.append(
                f"{row['psnr']:.2f} / {row['ssim']:.3f} ({row['psnr'] - row['smoothing_psnr']:+.2f}) {flags}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Familiarity ratios (warned above {UNFAMILIAR_RATIO})",
        "",
        "| stack | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in result[labels[0]]["familiarity"]:
        ratios = " | ".join(f"{result[k]['familiarity'][name]:.2f}" for k in labels)
        lines.append(f"| {name} | {ratios} |")
    lines.append("")
    for label in labels:
        sep = result[label]["separation"]
        lines.append(
            f"- {label}: highest SAM stack {sep['highest_sam']:.2f}; warned: "
            f"{', '.join(sep['flagged']) or 'none'}; above every SAM stack: "
            f"{', '.join(sep['above_every_sam']) or 'none'}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--label", default=None, help="row label (default: the run's folder name)")
    parser.add_argument("--held-out", action="store_true", help="also the test and other-optics plants")
    args = parser.parse_args()
    label = args.label or args.candidate.parent.name
    path = RESULTS / "candidate_gate.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    held_out = args.held_out or any(row.get("held_out") for row in result.values())
    shipped = result.get("shipped default", {})
    weights = dqlr.load_model("depth-aware").meta["sha256"]
    if shipped.get("sha256") != weights or shipped.get("held_out") != held_out:  # else still valid
        result["shipped default"] = {**gate("depth-aware", held_out), "held_out": held_out, "sha256": weights}
    result[label] = gate(str(args.candidate), args.held_out)
    result[label]["held_out"] = args.held_out
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = write_table(result)
    (RESULTS / "candidate_gate.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
