#!/usr/bin/env python3
"""Where DQLR stands: every method on the same simulated plants, against their clean stacks.

    .venv/bin/python benchmarks/quality.py [--work runs/default] [--n2v-minutes 12] [--skip-n2v]
    .venv/bin/python benchmarks/quality.py --report-only   # quality.md from the saved quality.json

Layout (as the paper): six plants, seeds 100-105: plants 0-3 train, 4 validation, 5 test. Models are
the runs of scripts/train_default_model.py in --work (trained there if missing, same recipe and
budget for each variant). Settings of the classical baselines are chosen on the validation plant,
never on the test plant. A seventh plant with other optics (faster PSF growth, twice the noise,
seed 999) checks how much each method keeps when the optics differ from the training ones.
Writes benchmarks/results/quality.md and quality.json and the figures used by the report. The test
plant's table also shows the deep cells a standard segmentation finds, from
benchmarks/results/segmentation.json (benchmarks/segmentation.py) where it has the method.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness.tuning import tune_gaussian_smoothing, tune_richardson_lucy

from dqlr.evaluation.baselines import gaussian_smoothing, richardson_lucy
from dqlr.evaluation.metrics import per_slice, thirds
from dqlr.inference.enhance import enhance
from dqlr.io import read_stack
from dqlr.model.checkpoint import load_model
from dqlr.simulation import Optics, simulate_plant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {
    "DQLR (paper, default config)": "default",
    "DQLR (paper, default config) without quantization": "noquant",
    "DQLR (paper, swept: lambda_ssim 0)": "paper-swept",
    "DQLR (paper, swept) without quantization": "paper-swept-noquant",
    "DQLR depth-aware": "depth-aware",
    "DQLR depth-aware without quantization": "depth-aware-noquant",
    "DQLR depth-aware, lambda_ssim 0": "depth-aware-swept",
}


# quality.md's rows -> the methods of segmentation.json (the shipped models are these runs' exports)
SEGMENTED = {
    "input": "input",
    "Gaussian smoothing tuned": "Gaussian smoothing (tuned)",
    "Richardson-Lucy tuned": "Richardson-Lucy (tuned)",
    "DQLR (paper, swept: lambda_ssim 0)": "dqlr paper",
    "DQLR (paper, swept) without quantization": "dqlr paper, no quantization",
    "DQLR depth-aware": "dqlr depth-aware (default)",
    "DQLR depth-aware without quantization": "dqlr depth-aware, no quantization",
    "Noise2Void (CAREamics)": "Noise2Void (CAREamics)",
}


def other_optics_plant() -> tuple[np.ndarray, np.ndarray]:
    optics = Optics(psf_xy_deep_um=1.2, psf_z_deep_um=3.0, psf_growth=1.0, photons_top=60.0)
    plant = simulate_plant(seed=999, optics=optics, noise=1.0)
    return plant.observed, plant.clean


def summarise(result: np.ndarray, clean: np.ndarray) -> dict[str, object]:
    scores = per_slice(result, clean)
    return {
        "psnr": thirds(scores["psnr"]),
        "ssim": thirds(scores["ssim"]),
        "psnr_per_slice": scores["psnr"].tolist(),
    }


def ensure_model(work: Path, name: str) -> Path | None:
    best = work / name / "best.pt"
    if not best.exists():
        script = ROOT / "scripts" / "train_default_model.py"
        subprocess.run([sys.executable, str(script), "--work", str(work), "--only", name], check=True)
    return best if best.exists() else None


def run_noise2void(args, data: Path, split: dict, tests: dict) -> tuple[dict, dict]:
    """Train CAREamics N2V on the training plants (its own environment) and denoise the test stacks;
    a finished run in --work/n2v is reused."""
    from harness.peers import noise2void_cached

    return noise2void_cached(
        {key: stack for key, (stack, _) in tests.items()},
        args.work / "n2v",
        [data / f"{n}_observed.tif" for n in split["train"]],
        data / f"{split['val'][0]}_observed.tif",
        minutes=args.n2v_minutes,
        threads=args.n2v_threads,
    )


def validation_table(work: Path, observed: np.ndarray, clean: np.ndarray) -> None:
    """Scores of every trained model (or its shipped export) on the validation plant, the plant
    choices are made on; writes benchmarks/results/quality_validation.md."""
    lines = [
        "# Trained models on the validation plant (where choices are made)",
        "",
        "Command: `.venv/bin/python benchmarks/quality.py --validation-only`. Plant 4 of seeds 100-105, "
        "affine-fitted PSNR / SSIM against its clean stack. A model not trained in --work is scored from "
        "its shipped export in src/dqlr/weights (the same weights).",
        "",
        "| model | PSNR top | PSNR deep | SSIM deep |",
        "|---|---|---|---|",
    ]
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_default_model import SHIP, WEIGHTS

    for label, name in {"input": None, **MODELS}.items():
        best = work / name / "best.pt" if name else None
        if best is not None and not best.exists() and name in SHIP:
            best = WEIGHTS / SHIP[name]  # the shipped export of that run: same weights
        if best is not None and not best.exists():
            continue
        result = observed if best is None else enhance(observed, load_model(best, device="cpu"))
        s = summarise(result, clean)
        lines.append(
            f"| {label} | {s['psnr']['top']:.2f} | {s['psnr']['deep']:.2f} | {s['ssim']['deep']:.3f} |"
        )
        print(lines[-1], flush=True)
    (RESULTS / "quality_validation.md").write_text("\n".join(lines) + "\n")


def _shares(found: dict) -> str:
    """Cells found slice by slice, and as a volume where segmentation.json has it."""
    volume = f" / {found['volume']['matched']:.1%}" if "volume" in found else ""
    return f"{found['matched']:.1%}{volume}"


def cells_found(name: str, segmentation: dict) -> str:
    """The share of the test plant's deep cells found for a quality.md row; blank if not segmented."""
    for row, method in SEGMENTED.items():
        if (name == row or name.startswith(row + " (")) and method in segmentation:
            return _shares(segmentation[method])
    return ""


def write_report(scores: dict, times: dict) -> str:
    """quality.md from the scores and times of quality.json, with segmentation.json's deep cells."""
    path = RESULTS / "segmentation.json"
    segmentation = json.loads(path.read_text())["test_plant_deepest_third"] if path.exists() else {}
    lines = [
        "# Quality on simulated SAM stacks (affine-fitted PSNR / SSIM against the clean stack)",
        "",
        "Command: `.venv/bin/python benchmarks/quality.py`. Train plants 0-3, validation plant 4 "
        "(all choices), test plant 5 (seeds 100-105); 'other optics': seed 999, faster PSF "
        "growth and half the photons, never seen by any method.",
        "",
    ]
    for key, table in scores.items():
        base = table["input"]
        segmented = key == "test plant" and bool(segmentation)
        extra = (" cells found deep (slice by slice / as a volume) |", "---|") if segmented else ("", "")
        lines += [
            f"## {key}",
            "",
            "| method | PSNR top | PSNR deep | gain deep (dB) | SSIM deep | train (s) | inference (s) |"
            + extra[0],
            "|---|---|---|---|---|---|---|" + extra[1],
        ]
        for name, s in table.items():
            gain = s["psnr"]["deep"] - base["psnr"]["deep"]
            t = times.get(name, {"train_s": 0, "infer_s": 0})
            lines.append(
                f"| {name} | {s['psnr']['top']:.2f} | {s['psnr']['deep']:.2f} | {gain:+.2f} | "
                f"{s['ssim']['deep']:.3f} | {t['train_s']:.0f} | {t['infer_s']:.1f} |"
                + (f" {cells_found(name, segmentation)} |" if segmented else "")
            )
        if segmented:
            clean, ceiling = (
                next((_shares(r) for n, r in segmentation.items() if n.startswith(prefix)), None)
                for prefix in ("clean", "supervised")
            )
            lines += [
                "",
                "Cells found deep: the share of the true cells of the deepest third that a standard "
                "segmentation finds at IoU >= 0.5 (benchmarks/results/segmentation.md, the shipped "
                "export of each run; for the depth-aware ablation and Noise2Void a new run of their "
                "recipe, whose own PSNR is in segmentation.md; blank: not segmented)"
                + ("; slice by slice, or the stack as one volume (a 3-D seeded watershed)")
                + (f"; on the clean stack it finds {clean}" if clean is not None else "")
                + (f", after the supervised ceiling {ceiling}" if ceiling is not None else "")
                + ".",
            ]
        lines.append("")
    lines.append("Inference time is the sum over both evaluation stacks (48 x 256 x 256 each).")
    text = "\n".join(lines) + "\n"
    (RESULTS / "quality.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--n2v-minutes", type=float, default=12.0)
    parser.add_argument("--skip-n2v", action="store_true")
    parser.add_argument("--n2v-threads", type=int, default=0)
    parser.add_argument("--only-n2v", action="store_true", help="train/cache Noise2Void and stop")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="score the trained models on the validation plant (for choices) and stop",
    )
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate only the models already trained in --work"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write quality.md from the saved quality.json (and segmentation.json) and stop",
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "quality.json").read_text())
        print(write_report(saved["scores"], saved["times"]))
        return
    data = args.work / "data"
    split = json.loads((data / "split.json").read_text())
    observed = {n: read_stack(data / f"{n}_observed.tif").data for n in split["val"] + split["test"]}
    clean = {n: read_stack(data / f"{n}_clean.tif").data for n in split["val"] + split["test"]}
    val, test = split["val"][0], split["test"][0]
    tests = {"test plant": (observed[test], clean[test]), "other optics": other_optics_plant()}
    outputs: dict[str, dict[str, np.ndarray]] = {k: {"input": v[0]} for k, v in tests.items()}
    if args.only_n2v:
        run_noise2void(args, data, split, tests)
        return
    if args.validation_only:
        validation_table(args.work, observed[val], clean[val])
        return
    times: dict[str, dict[str, float]] = {"input": {"train_s": 0.0, "infer_s": 0.0}}
    settings: dict[str, object] = {}

    def run(name: str, function, train_seconds: float = 0.0) -> None:
        times[name] = {"train_s": train_seconds, "infer_s": 0.0}
        for key, (stack, _) in tests.items():
            started = time.perf_counter()
            outputs[key][name] = function(stack)
            times[name]["infer_s"] += time.perf_counter() - started
        print(f"done: {name}", flush=True)

    run("Richardson-Lucy default (sigma 2 px, 20 it.)", lambda s: richardson_lucy(s, 2.0, 20))
    started = time.perf_counter()
    tuned = tune_richardson_lucy(observed[val], clean[val])
    rl_tuning = time.perf_counter() - started
    settings["richardson_lucy_tuned"] = {k: v for k, v in tuned.items() if k != "table"}
    run(
        f"Richardson-Lucy tuned (sigma {tuned['sigma_px']} px, {tuned['iterations']} it.)",
        lambda s: richardson_lucy(s, tuned["sigma_px"], tuned["iterations"]),
        rl_tuning,
    )
    smooth = tune_gaussian_smoothing(observed[val], clean[val])
    settings["gaussian_smoothing_tuned"] = {k: v for k, v in smooth.items() if k != "table"}
    run(
        f"Gaussian smoothing tuned (sigma {smooth['sigma_px']} px)",
        lambda s: gaussian_smoothing(s, smooth["sigma_px"]),
    )

    for label, name in MODELS.items():
        best = ensure_model(args.work, name) if not args.skip_training else (args.work / name / "best.pt")
        if best is None or not best.exists():
            print(f"skipped: {label} (no model in {args.work / name})")
            continue
        model = load_model(best, device="cpu")
        log = args.work / name / "metrics.csv"
        seconds = 0.0
        if log.exists():
            import csv

            seconds = sum(float(r["seconds"]) for r in csv.DictReader(log.open()))
        run(label, lambda s, m=model: enhance(s, m), seconds)

    if not args.skip_n2v:
        info, n2v_outputs = run_noise2void(args, data, split, tests)
        settings["noise2void"] = info
        times["Noise2Void (CAREamics)"] = {
            "train_s": info.get("train_seconds", 0.0),
            "infer_s": info.get("predict_seconds", 0.0),
        }
        for key, result in n2v_outputs.items():
            outputs[key]["Noise2Void (CAREamics)"] = result

    scores = {
        key: {name: summarise(result, tests[key][1]) for name, result in results.items()}
        for key, results in outputs.items()
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(
        json.dumps({"scores": scores, "times": times, "settings": settings}, indent=2)
    )
    print(write_report(scores, times))
    from dqlr.reporting.figures import slice_figure

    for key, results in outputs.items():
        slice_figure(
            {**results, "clean": tests[key][1]},
            RESULTS / f"quality_{key.replace(' ', '_')}.png",
            per_slice_contrast=True,
        )


if __name__ == "__main__":
    main()
