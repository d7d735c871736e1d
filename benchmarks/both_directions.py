#!/usr/bin/env python3
"""Context from both neighbours: enhance top-down and bottom-up and average (issue 15, point 3).

    .venv/bin/python benchmarks/both_directions.py [--supervised runs/supervised/best.pt]
        [--candidate runs/budget/20-epochs_depth_aware.axial_ratio-3.0/best.pt] [--repeats 3]

`EnhanceOptions(both_directions=True)` (`dqlr enhance --both-directions`) runs the model over the
stack a second time with the stack turned over, so each slice's result also draws on the slice
below, and averages the two passes. This scores one pass against both on the plants of
shipped_scores.py (deepest and top third, affine-fitted PSNR / SSIM against the clean stack):
the shipped default on all three; the supervised ceiling of supervised_ceiling.py (benchmark
only) on all three where its run is there, since the target is a gap to it and the ceiling gains
from the second pass too; a training candidate (not shipped) on the validation plant only. Then
the shipped default both ways on the eight stacks our simulator does not make by default
(out_of_domain.py's cases, their most degraded third), with the slices the guard replaced: the
second pass must not invent structure where the first does not. It also times `dqlr.enhance` of
the validation plant (48 x 256 x 256) both ways, alternating, median of --repeats, and writes
results/both_directions.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness.cases import cases
from out_of_domain import scores as case_scores
from shipped_scores import plants

import dqlr

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT = "shipped default"
CEILING = "supervised ceiling (clean targets; benchmark only)"
CANDIDATE = "candidate: depth_aware.axial_ratio=3.0 (not shipped)"
GUARD_NOTE = "are plain smoothing of the input"  # the guard's note (the familiarity note differs)


def scores(observed: np.ndarray, clean: np.ndarray, model: Any, both: bool) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dqlr.DqlrWarning)
        result = dqlr.enhance(observed, model, device="cpu", both_directions=both)
    thirds = dqlr.evaluate(result, reference=clean)["result"]["thirds"]
    return {
        "psnr_deep": thirds["psnr"]["deep"],
        "ssim_deep": thirds["ssim"]["deep"],
        "psnr_top": thirds["psnr"]["top"],
    }


def out_of_domain() -> dict[str, dict]:
    """The shipped default one way and both ways on each out-of-domain case, most degraded third."""
    rows = {}
    for case in cases():
        row: dict[str, dict] = {}
        for way, both in (("one pass", False), ("both directions", True)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", dqlr.DqlrWarning)
                result = dqlr.enhance(
                    case.observed,
                    "depth-aware",
                    device="cpu",
                    voxel_size=case.voxel_size,
                    both_directions=both,
                )
            guarded = [str(w.message) for w in caught if GUARD_NOTE in str(w.message)]
            row[way] = {**case_scores(result, case, case.worst_third()), "guard": guarded}
        rows[case.name] = row
        print(case.name, row, flush=True)
    return rows


def seconds(observed: np.ndarray, model: Any, repeats: int) -> dict[str, float]:
    """Median wall time of dqlr.enhance one way and both ways, run alternately."""
    runs: dict[str, list[float]] = {"one pass": [], "both directions": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dqlr.DqlrWarning)
        dqlr.enhance(observed, model, device="cpu")  # warm-up: graph load and first calls
        for _ in range(repeats):
            for name, both in (("one pass", False), ("both directions", True)):
                started = time.perf_counter()
                dqlr.enhance(observed, model, device="cpu", both_directions=both)
                runs[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in runs.items()}


def _guarded(notes: list[str]) -> str:
    """'N of M slices' from the guard's note, or none."""
    guard = [note for note in notes if GUARD_NOTE in note]
    return guard[0].split(" (z =")[0] if guard else "none"


def write_table(result: dict) -> str:
    lines = [
        "# Context from both neighbours: one pass against both directions",
        "",
        "Command: `.venv/bin/python benchmarks/both_directions.py`. Plants of shipped_scores.py; "
        "affine-fitted PSNR (dB) / SSIM against the clean stack. Both directions: the stack enhanced "
        "top-down and turned over, the two results averaged (`dqlr enhance --both-directions`).",
        "",
        "| plant | model | PSNR deep, one pass | PSNR deep, both | gain deep | SSIM deep, one / both "
        "| PSNR top, one / both |",
        "|---|---|---|---|---|---|---|",
    ]
    for plant, models in result["scores"].items():
        for model, row in models.items():
            one, both = row["one pass"], row["both directions"]
            lines.append(
                f"| {plant} | {model} | {one['psnr_deep']:.2f} | {both['psnr_deep']:.2f} | "
                f"{both['psnr_deep'] - one['psnr_deep']:+.2f} | {one['ssim_deep']:.3f} / "
                f"{both['ssim_deep']:.3f} | {one['psnr_top']:.2f} / {both['psnr_top']:.2f} |"
            )
    gaps = []
    for plant, models in result["scores"].items():
        if DEFAULT in models and CEILING in models:
            parts = []
            for way in ("one pass", "both directions"):
                gap = models[DEFAULT][way]["psnr_deep"] - models[CEILING][way]["psnr_deep"]
                parts.append(f"{gap:+.2f} dB {way}")
            gaps.append(f"{plant}: " + ", ".join(parts))
    if gaps:
        lines += ["", "Shipped default minus the ceiling, deepest third, each enhanced the same way: "]
        lines += [f"- {gap}" for gap in gaps]
    lines += [
        "",
        "## Stacks our simulator does not make by default",
        "",
        "The shipped default on the cases of out_of_domain.md, their most degraded third, affine-fitted "
        "PSNR (dB) / SSIM; guard: the note on slices replaced by smoothing (none: no slice).",
        "",
        "| case | one pass | both directions | gain (dB) | guard, one pass / both |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["cases"].items():
        one, both = row["one pass"], row["both directions"]
        guards = " / ".join(_guarded(r["guard"]) for r in (one, both))
        lines.append(
            f"| {name} | {one['psnr']:.2f} / {one['ssim']:.3f} | {both['psnr']:.2f} / {both['ssim']:.3f} | "
            f"{both['psnr'] - one['psnr']:+.2f} | {guards} |"
        )
    timing = result["seconds"]
    lines += [
        "",
        f"`dqlr.enhance` of the validation plant ({result['machine']}, median of "
        f"{result['repeats']}, alternating): one pass {timing['one pass']:.2f} s, both directions "
        f"{timing['both directions']:.2f} s ({timing['both directions'] / timing['one pass']:.2f}x).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supervised", type=Path, default=ROOT / "runs" / "supervised" / "best.pt")
    parser.add_argument(
        "--candidate",
        type=Path,
        default=ROOT / "runs" / "budget" / "20-epochs_depth_aware.axial_ratio-3.0" / "best.pt",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models: dict[str, Any] = {DEFAULT: "depth-aware"}
    if args.supervised.exists():
        models[CEILING] = dqlr.load_model(args.supervised)
    candidate = dqlr.load_model(args.candidate) if args.candidate.exists() else None
    result: dict = {"scores": {}}
    stacks = plants()
    for plant, (observed, clean) in stacks.items():
        shown = dict(models)
        if candidate is not None and plant == "validation plant":  # chosen there, never tested
            shown[CANDIDATE] = candidate
        result["scores"][plant] = {}
        for name, model in shown.items():
            row = {
                way: scores(observed, clean, model, both)
                for way, both in (("one pass", False), ("both directions", True))
            }
            result["scores"][plant][name] = row
            print(plant, name, row, flush=True)
    result["cases"] = out_of_domain()
    result["seconds"] = seconds(stacks["validation plant"][0], "depth-aware", args.repeats)
    result["repeats"] = args.repeats
    result["machine"] = f"{os.cpu_count()} cores, CPU"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "both_directions.json").write_text(json.dumps(result, indent=2) + "\n")
    table = write_table(result)
    (RESULTS / "both_directions.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
