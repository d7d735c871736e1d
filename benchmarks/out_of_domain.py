#!/usr/bin/env python3
"""Does the default path invent structure on stacks our simulator did not make? Measured.

    .venv/bin/python benchmarks/out_of_domain.py [--adapt-minutes 3] [--only NAME ...] [--skip-adapt]

Cases (benchmarks/harness/cases.py): nuclei, 3x larger cells, 0.1 and 0.5 µm pixels, in focus in
the middle, bottom-up, near-empty top slices (the demo plant), a dense regular wall grid. For each,
the most degraded third of the slices is scored (affine-fitted PSNR / SSIM against the clean stack)
for the input, Gaussian smoothing and Richardson-Lucy (settings tuned on the validation plant by
benchmarks/quality.py, converted to µm so they mean the same blur at any pixel size), the shipped
default model, and the shipped model adapted to the case itself (`dqlr enhance --adapt`: the same
self-supervised fine-tuning, with the default budget). The notes the user is shown are recorded.
Writes benchmarks/results/out_of_domain.{json,md,png}; --only merges into the existing JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness.cases import Case, cases
from matplotlib.figure import Figure

import dqlr
from dqlr.evaluation.baselines import gaussian_smoothing, richardson_lucy
from dqlr.evaluation.metrics import psnr_affine, ssim_affine
from dqlr.model.checkpoint import load_model
from dqlr.runtime import mixed_precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL_PIXEL_UM = 0.25  # pixel size of the validation plant the baselines were tuned on
METHODS = ("input", "Gaussian smoothing", "Richardson-Lucy", "shipped", "shipped + adapt")


def tuned_settings() -> dict[str, Any]:
    """Baseline settings chosen on the validation plant (benchmarks/quality.py)."""
    settings = json.loads((RESULTS / "quality.json").read_text())["settings"]
    return {"gaussian": settings["gaussian_smoothing_tuned"], "rl": settings["richardson_lucy_tuned"]}


def scores(result: np.ndarray, case: Case, slices: np.ndarray) -> dict[str, float]:
    return {
        "psnr": float(np.mean([psnr_affine(result[z], case.clean[z]) for z in slices])),
        "ssim": float(np.mean([ssim_affine(result[z], case.clean[z]) for z in slices])),
    }


def with_notes(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dqlr.DqlrWarning)
        result = function(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, dqlr.DqlrWarning)]


def run_case(case: Case, settings: dict[str, Any], adapt_minutes: float | None) -> tuple[dict, dict]:
    scale = MODEL_PIXEL_UM / case.voxel_size[2]  # tuned sigmas are in 0.25 µm pixels
    results: dict[str, np.ndarray] = {"input": case.observed}
    notes: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    results["Gaussian smoothing"] = gaussian_smoothing(
        case.observed, settings["gaussian"]["sigma_px"] * scale
    )
    seconds["Gaussian smoothing"] = time.perf_counter() - start
    start = time.perf_counter()
    rl = settings["rl"]
    results["Richardson-Lucy"] = richardson_lucy(case.observed, rl["sigma_px"] * scale, rl["iterations"])
    seconds["Richardson-Lucy"] = time.perf_counter() - start
    model = load_model(None)
    start = time.perf_counter()
    results["shipped"], notes["shipped"] = with_notes(
        dqlr.enhance, case.observed, model, voxel_size=case.voxel_size
    )
    seconds["shipped"] = time.perf_counter() - start
    if adapt_minutes is not None:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            adapted, notes["adapt"] = with_notes(
                dqlr.adapt,
                [case.observed],
                Path(tmp) / "adapted",
                minutes=adapt_minutes,
                options=dqlr.EnhanceOptions(voxel_size=case.voxel_size),
                run=dqlr.RunOptions(progress=False),
            )
            results["shipped + adapt"], notes["shipped + adapt"] = with_notes(
                dqlr.enhance, case.observed, str(adapted.best), voxel_size=case.voxel_size
            )
            seconds["shipped + adapt"] = time.perf_counter() - start
    worst = case.worst_third()
    row: dict[str, Any] = {
        "what": case.what,
        "shape": list(case.observed.shape),
        "voxel_size": list(case.voxel_size),
        "worst_third": [int(z) for z in worst],
        "scores": {name: scores(result, case, worst) for name, result in results.items()},
        "top_slice": {name: scores(result, case, np.array([0])) for name, result in results.items()},
        "notes": notes,
        "seconds": seconds,
    }
    return row, results


def figure(rows: dict[str, dict], pictures: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """One row per case: the middle slice of its most degraded third, by method, and the clean one."""
    names = [name for name in rows if name in pictures]
    columns = [m for m in METHODS if any(m in pictures[n] for n in names)] + ["clean"]
    fig = Figure(figsize=(2.0 * len(columns), 2.1 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(columns), squeeze=False)
    for i, name in enumerate(names):
        worst = rows[name]["worst_third"]
        z = 0 if name == "near-empty top" else worst[len(worst) // 2]
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = pictures[name].get(column)
            if image is None:
                continue
            plane = np.asarray(image[z], np.float64)
            side = min(plane.shape[0], 160)
            plane = plane[:side, :side]
            low, high = np.percentile(plane, (1, 99.7))
            ax.imshow(plane, cmap="gray", vmin=low, vmax=high)
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\nz={z}", fontsize=8)
    fig.savefig(path, dpi=80)


def table(rows: dict[str, dict], key: str, bold: bool) -> list[str]:
    """A markdown table of PSNR / SSIM per case and method (the best PSNR in bold if asked)."""
    lines = ["| case | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for name, row in rows.items():
        got = row[key]
        best = max(v["psnr"] for v in got.values())
        cells = []
        for method in METHODS:
            text = f"{got[method]['psnr']:.2f} / {got[method]['ssim']:.3f}" if method in got else "-"
            cells.append(f"**{text}**" if bold and method in got and got[method]["psnr"] == best else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: dict[str, dict], minutes: float | None, precision: str) -> str:
    lines = [
        "# Out-of-domain stacks: does the default path invent structure?",
        "",
        "Generated by `.venv/bin/python benchmarks/out_of_domain.py` (2 CPU cores). Each case is a stack",
        "our SAM simulator does not make by default (benchmarks/harness/cases.py). Scores: affine-fitted",
        "PSNR (dB) / SSIM against the clean stack on the most degraded third of the slices (the deepest",
        "third unless the sharp end is elsewhere). Baselines use the settings tuned on the validation",
        "plant, converted to µm.",
        f"`shipped + adapt` fine-tunes the shipped default on the case itself for {minutes} minutes (as",
        f"`dqlr enhance --adapt`; its steps in {precision}), with no clean data. Best per row in bold.",
        "",
        *table(rows, "scores", bold=True),
        "",
        "## Top slice (z = 0)",
        "",
        *table(rows, "top_slice", bold=False),
    ]
    lines += ["", "## What the user was told", ""]
    for name, row in rows.items():
        for step, notes in row["notes"].items():
            for note in notes:
                lines.append(f"- {name}, {step}: {note}")
    lines += ["", "![out-of-domain cases](out_of_domain.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapt-minutes", type=float, default=3.0)
    parser.add_argument("--skip-adapt", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    settings = tuned_settings()
    minutes = None if args.skip_adapt else args.adapt_minutes
    out_json = RESULTS / "out_of_domain.json"
    previous = json.loads(out_json.read_text()) if args.only and out_json.exists() else {"cases": {}}
    rows: dict[str, dict] = previous["cases"]
    pictures: dict[str, dict[str, np.ndarray]] = {}
    for case in cases():
        if args.only and case.name not in args.only:
            continue
        print(f"{case.name} ...", flush=True)
        row, results = run_case(case, settings, minutes)
        rows[case.name] = row
        pictures[case.name] = {**results, "clean": case.clean}
        print({k: round(v["psnr"], 2) for k, v in row["scores"].items()}, flush=True)
    order = [
        c
        for c in (
            "nuclei",
            "large cells",
            "0.1 µm pixels",
            "0.5 µm pixels",
            "focus in the middle",
            "bottom-up",
            "near-empty top",
            "wall grid",
        )
        if c in rows
    ]
    rows = {name: rows[name] for name in order}
    precision = "bf16 mixed precision" if mixed_precision(torch.device("cpu")) else "float32"
    data = {"adapt_minutes": minutes, "adapt_steps": precision, "baseline_settings": settings, "cases": rows}
    out_json.write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "out_of_domain.md").write_text(markdown(rows, minutes, precision))
    if pictures:
        figure(rows, pictures, RESULTS / "out_of_domain.png")


if __name__ == "__main__":
    main()
