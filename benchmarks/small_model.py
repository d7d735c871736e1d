#!/usr/bin/env python3
"""Would a smaller network keep the shipped default's quality? (issue 14: the CPU speed target)

    .venv/bin/python scripts/train_default_model.py --only depth-aware-small   (about 40 min in float32)
    .venv/bin/python scripts/distil_small_model.py   (about 12 min on a quiet machine)
    .venv/bin/python benchmarks/small_model.py
    .venv/bin/python benchmarks/small_model.py --held-out small|distilled   (once, before shipping)

The default's recipe with half the full-resolution channels (`depth-aware-small`), and the same
network fine-tuned on the default's outputs (distilled). Scored on the validation plant only
(seed 104; the test plant is kept for a model that would ship): deepest-third PSNR / SSIM against
the shipped default, the ONNX Runtime time of one 512 x 512 slice of each, and `dqlr enhance` as a
fresh process on the 40 x 512 x 512 stack of enhance_speed.py against Richardson-Lucy
(alternating, medians of 3). Issue 14 allows a new default only within 0.1 dB of today's.
`--held-out` scores one candidate once on the plants kept for a model that would ship (the test
plant and the other-optics plant of shipped_scores.py) against the default's committed scores, and
adds it to results/small_model_held_out.json/.md. The trained candidates (without optimiser state)
and their step graphs are kept in results/candidates/, so this runs without training again. Writes
results/small_model.json/.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from enhance_speed import REPEATS, fresh_process_seconds, richardson_lucy_seconds

import dqlr
from dqlr.inference.engines import OnnxEngine
from dqlr.model.checkpoint import LoadedModel, load_model
from dqlr.simulation import simulate_plant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL = RESULTS / "candidates" / "dqlr_depth_aware_small.pt"
# the same network fine-tuned with the default as teacher (scripts/distil_small_model.py)
DISTILLED = RESULTS / "candidates" / "dqlr_depth_aware_distilled.pt"
CANDIDATES = {
    "half the full-resolution channels": SMALL,
    "the same, distilled from the default": DISTILLED,
}


def slice_seconds(model: LoadedModel, repeats: int = 5) -> float:
    engine = OnnxEngine(model)
    tiles = np.random.default_rng(0).random((1, 512, 512)).astype(np.float32)
    engine.step(tiles, 0.5, [None])
    started = time.perf_counter()
    for _ in range(repeats):
        engine.step(tiles, 0.5, [None])
    return (time.perf_counter() - started) / repeats


def fresh_process_comparison(candidate: Path) -> dict[str, float]:
    stack = simulate_plant(shape=(40, 512, 512), seed=7).observed
    times: dict[str, list[float]] = {"default": [], "candidate": [], "richardson_lucy": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "speed.tif"
        dqlr.write_stack(source, stack, voxel_size=(1.0, 0.25, 0.25), force=True)
        for _ in range(REPEATS):
            times["default"].append(fresh_process_seconds(source, Path(tmp)))
            times["candidate"].append(fresh_process_seconds(source, Path(tmp), "--model", str(candidate)))
            times["richardson_lucy"].append(richardson_lucy_seconds(stack))
    return {k: float(np.median(v)) for k, v in times.items()}


def held_out(name: str) -> None:
    """Score one candidate, once, on the held-out plants; the file keeps every candidate scored."""
    from shipped_scores import plants

    default = json.loads((RESULTS / "shipped_scores.json").read_text())
    saved = RESULTS / "small_model_held_out.json"
    scored = json.loads(saved.read_text()) if saved.exists() else {}
    if "test plant" in scored:  # the first candidate's file, from before there were several
        scored = {"half the full-resolution channels": scored}
    candidate = load_model(CANDIDATES[name])
    rows = {}
    for plant, (observed, clean) in plants().items():
        if plant == "validation plant":
            continue
        result = dqlr.enhance(observed, candidate, device="cpu")
        deep = dqlr.evaluate(result, reference=clean)["result"]["thirds"]
        rows[plant] = {
            "default": default[plant]["depth-aware"],
            "candidate": {"psnr_deep": deep["psnr"]["deep"], "ssim_deep": deep["ssim"]["deep"]},
        }
        print(plant, rows[plant], flush=True)
    scored[name] = rows
    saved.write_text(json.dumps(scored, indent=2) + "\n")
    lines = [
        "# The smaller candidates on the held-out plants",
        "",
        "Command: `.venv/bin/python benchmarks/small_model.py --held-out small|distilled` (each once, "
        "after it won on the validation plant). Deepest third, affine-fitted PSNR / SSIM against the "
        "clean stack; the default's scores are those of `shipped_scores.json`.",
        "",
        "| candidate | plant | default PSNR (dB) | candidate PSNR (dB) | difference | default SSIM | "
        "candidate SSIM |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c} | {p} | {r['default']['psnr_deep']:.2f} | {r['candidate']['psnr_deep']:.2f} | "
            f"{r['candidate']['psnr_deep'] - r['default']['psnr_deep']:+.2f} | "
            f"{r['default']['ssim_deep']:.3f} | {r['candidate']['ssim_deep']:.3f} |"
            for c, plants_ in scored.items()
            for p, r in plants_.items()
        ),
    ]
    (RESULTS / "small_model_held_out.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if "--held-out" in sys.argv[1:]:
        key = (sys.argv[sys.argv.index("--held-out") + 1 :] or ["small"])[0]  # small or distilled
        held_out(list(CANDIDATES)[["small", "distilled"].index(key)])
        return
    plant = dqlr.simulate(seed=104)
    rows = {}
    models = {"shipped default": None, **{n: p for n, p in CANDIDATES.items() if p.exists()}}
    for name, path in models.items():
        model = load_model(path)
        result = dqlr.enhance(plant.observed, model, device="cpu")
        deep = dqlr.evaluate(result, reference=plant.clean)["result"]["thirds"]
        rows[name] = {
            "base_channels": model.config.model.base_channels,
            "training_steps": model.meta.get("step"),  # the distilled: after the from-scratch run's
            "teacher": "shipped default" if path == DISTILLED else None,
            "psnr_deep": deep["psnr"]["deep"],
            "ssim_deep": deep["ssim"]["deep"],
            "seconds_per_512_slice": slice_seconds(model),
        }
        print(name, rows[name], flush=True)
    fastest = [p for p in models.values() if p is not None][-1]
    speed = fresh_process_comparison(fastest)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "small_model.json").write_text(json.dumps({**rows, "fresh_process": speed}, indent=2) + "\n")
    default = rows["shipped default"]
    lines = [
        "# A smaller network for the CPU (validation plant only)",
        "",
        "Commands: `.venv/bin/python scripts/train_default_model.py --only depth-aware-small` (from "
        "scratch), `.venv/bin/python scripts/distil_small_model.py` (that network fine-tuned on the "
        "default's outputs), then `.venv/bin/python benchmarks/small_model.py`. Validation plant "
        "(seed 104), deepest third.",
        "",
        "| model | base channels | training steps | PSNR deep (dB) | difference | SSIM deep "
        "| s per 512 x 512 slice (ONNX Runtime) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {n} | {r['base_channels']} | {'+' if r['teacher'] else ''}{r['training_steps']} | "
            f"{r['psnr_deep']:.2f} | "
            f"{r['psnr_deep'] - default['psnr_deep']:+.2f} | {r['ssim_deep']:.3f} | "
            f"{r['seconds_per_512_slice']:.3f} |"
            for n, r in rows.items()
        ),
        "",
        "Issue 14 allows a new default only within 0.1 dB (and it must then be scored once on the "
        "held-out plants: small_model_held_out.md).",
        "",
        f"`dqlr enhance` as a fresh process, 40 x 512 x 512 uint16 (medians of {REPEATS}, alternating with "
        f"Richardson-Lucy): shipped default {speed['default']:.1f} s, `{fastest.name}` "
        f"{speed['candidate']:.1f} s, Richardson-Lucy {speed['richardson_lucy']:.1f} s; the candidate "
        f"takes {speed['candidate'] / speed['richardson_lucy']:.2f}x the Richardson-Lucy time "
        f"(the default {speed['default'] / speed['richardson_lucy']:.2f}x; target at most 1.5x).",
    ]
    (RESULTS / "small_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
