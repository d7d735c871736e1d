#!/usr/bin/env python3
"""Would a smaller network keep the shipped default's quality? (issue 14: the CPU speed target)

    .venv/bin/python scripts/train_default_model.py --only depth-aware-small   (about 40 min)
    .venv/bin/python benchmarks/small_model.py
    .venv/bin/python benchmarks/small_model.py --held-out   (once, before shipping it)

The default's recipe with half the full-resolution channels (`depth-aware-small`). Scored on the
validation plant only (seed 104; the test plant is kept for a model that would ship): deepest-third
PSNR / SSIM against the shipped default, the ONNX Runtime time of one 512 x 512 slice of each, and
`dqlr enhance` as a fresh process on the 40 x 512 x 512 stack of enhance_speed.py against
Richardson-Lucy (alternating, medians of 3). Issue 14 allows a new default only within 0.1 dB of
today's. `--held-out` scores the candidate once on the plants kept for a model that would ship (the
test plant and the other-optics plant of shipped_scores.py) against the default's committed scores,
and writes results/small_model_held_out.json/.md. The trained candidate (without optimiser state)
and its step graph are kept in results/candidates/, so this runs without training again. Writes
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


def slice_seconds(model: LoadedModel, repeats: int = 5) -> float:
    engine = OnnxEngine(model)
    tiles = np.random.default_rng(0).random((1, 512, 512)).astype(np.float32)
    engine.step(tiles, 0.5, [None])
    started = time.perf_counter()
    for _ in range(repeats):
        engine.step(tiles, 0.5, [None])
    return (time.perf_counter() - started) / repeats


def fresh_process_comparison() -> dict[str, float]:
    stack = simulate_plant(shape=(40, 512, 512), seed=7).observed
    times: dict[str, list[float]] = {"default": [], "candidate": [], "richardson_lucy": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "speed.tif"
        dqlr.write_stack(source, stack, voxel_size=(1.0, 0.25, 0.25), force=True)
        for _ in range(REPEATS):
            times["default"].append(fresh_process_seconds(source, Path(tmp)))
            times["candidate"].append(fresh_process_seconds(source, Path(tmp), "--model", str(SMALL)))
            times["richardson_lucy"].append(richardson_lucy_seconds(stack))
    return {k: float(np.median(v)) for k, v in times.items()}


def held_out() -> None:
    from shipped_scores import plants

    default = json.loads((RESULTS / "shipped_scores.json").read_text())
    candidate = load_model(SMALL)
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
    (RESULTS / "small_model_held_out.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# The half-width candidate on the held-out plants",
        "",
        "Command: `.venv/bin/python benchmarks/small_model.py --held-out`. Deepest third, affine-fitted "
        "PSNR / SSIM against the clean stack; the default's scores are those of `shipped_scores.json`.",
        "",
        "| plant | default PSNR (dB) | candidate PSNR (dB) | difference | default SSIM | candidate SSIM |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p} | {r['default']['psnr_deep']:.2f} | {r['candidate']['psnr_deep']:.2f} | "
            f"{r['candidate']['psnr_deep'] - r['default']['psnr_deep']:+.2f} | "
            f"{r['default']['ssim_deep']:.3f} | {r['candidate']['ssim_deep']:.3f} |"
            for p, r in rows.items()
        ),
    ]
    (RESULTS / "small_model_held_out.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if "--held-out" in sys.argv[1:]:
        held_out()
        return
    plant = dqlr.simulate(seed=104)
    rows = {}
    for name, path in (("shipped default", None), ("half the full-resolution channels", SMALL)):
        model = load_model(path)
        result = dqlr.enhance(plant.observed, model, device="cpu")
        deep = dqlr.evaluate(result, reference=plant.clean)["result"]["thirds"]
        rows[name] = {
            "base_channels": model.config.model.base_channels,
            "training_steps": model.meta.get("step"),
            "psnr_deep": deep["psnr"]["deep"],
            "ssim_deep": deep["ssim"]["deep"],
            "seconds_per_512_slice": slice_seconds(model),
        }
        print(name, rows[name], flush=True)
    speed = fresh_process_comparison()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "small_model.json").write_text(json.dumps({**rows, "fresh_process": speed}, indent=2) + "\n")
    default, small = rows.values()
    lines = [
        "# A smaller network for the CPU (validation plant only)",
        "",
        "Commands: `.venv/bin/python scripts/train_default_model.py --only depth-aware-small`, then "
        "`.venv/bin/python benchmarks/small_model.py`. Validation plant (seed 104), deepest third.",
        "",
        "| model | base channels | training steps | PSNR deep (dB) | SSIM deep | s per 512 x 512 slice "
        "(ONNX Runtime) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {r['base_channels']} | {r['training_steps']} | {r['psnr_deep']:.2f} | "
            f"{r['ssim_deep']:.3f} | {r['seconds_per_512_slice']:.3f} |"
            for n, r in rows.items()
        ),
        "",
        f"Difference: {small['psnr_deep'] - default['psnr_deep']:+.2f} dB, "
        f"{default['seconds_per_512_slice'] / small['seconds_per_512_slice']:.1f}x the speed. Issue 14 "
        "allows a new default only within 0.1 dB (and it must then be scored once on the test plant).",
        "",
        f"`dqlr enhance` as a fresh process, 40 x 512 x 512 uint16 (medians of {REPEATS}, alternating with "
        f"Richardson-Lucy): shipped default {speed['default']:.1f} s, candidate {speed['candidate']:.1f} s, "
        f"Richardson-Lucy {speed['richardson_lucy']:.1f} s; the candidate takes "
        f"{speed['candidate'] / speed['richardson_lucy']:.2f}x the Richardson-Lucy time "
        f"(the default {speed['default'] / speed['richardson_lucy']:.2f}x; target at most 1.5x).",
    ]
    (RESULTS / "small_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
