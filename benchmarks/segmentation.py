#!/usr/bin/env python3
"""Deep cells a standard segmentation finds, for every method (issue 15, point 1).

    .venv/bin/python benchmarks/segmentation.py [--supervised runs/supervised/best.pt]
        [--ablation runs/default/depth-aware-noquant/best.pt] [--n2v-minutes 12 | --skip-n2v]

Plants of benchmarks/quality.py: the validation plant (seed 104) chooses, the test plant (seed 105)
is scored once. Methods: the input, Gaussian smoothing and Richardson-Lucy with the settings tuned
on the validation plant (results/quality.json), the shipped models (depth-aware default, paper,
its no-quantization ablation), Noise2Void (CAREamics, in its own environment: trained as
benchmarks/quality.py trains it, on the same training plants for the same minutes, and run on both
plants; the run is kept in runs/default/n2v-segmentation and reused), the clean stack (what the
segmentation itself can do) and, when their runs are there, the default's recipe without
quantization and the supervised ceiling of benchmarks/supervised_ceiling.py (benchmark only).

The seeded watershed of dqlr.evaluation.segmentation gets, for each method, the smoothing and seed
depth that find the most true cells in the deepest third of the validation plant (a 5 x 4 grid),
so no method loses by a setting that suits another. Scores on the test plant's deepest third:
share of true cells found at IoU >= 0.5; the same share among the cells that the segmentation
finds in the clean stack (how the issue counted); adapted Rand error; split and merged cells per
slice. The same again with the stack segmented as one volume (a 3-D seeded watershed,
`segment_stack(..., volume=True)`; smoothing in and across slices chosen per method on the
validation plant from a 2 x 2 grid). Writes results/segmentation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import warnings
from itertools import product
from pathlib import Path

import numpy as np

import dqlr
from dqlr.evaluation.baselines import gaussian_smoothing, richardson_lucy
from dqlr.evaluation.metrics import psnr_affine
from dqlr.evaluation.segmentation import (
    SegmentationSettings,
    matched_cells,
    segment_slice,
    segment_stack,
    slice_scores,
)
from dqlr.model.checkpoint import LoadedModel
from dqlr.simulation import SimulatedPlant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIGMAS = (0.5, 1.0, 1.5, 2.0, 2.5)
DEPTHS = (0.01, 0.02, 0.03, 0.05)
SHIPPED = {
    "dqlr depth-aware (default)": "depth-aware",
    "dqlr paper": "paper",
    "dqlr paper, no quantization": "noquant",
}
CEILING = "supervised ceiling (clean targets; benchmark only)"
N2V = "Noise2Void (CAREamics)"
ABLATION = "dqlr depth-aware, no quantization"
# the volume segmentation's grid (sigma in slices, sigma across slices; h 0.02: on the clean and the
# raw validation plant h 0.01-0.04 changed the cells found by under a point)
VOLUME_GRID = [SegmentationSettings(sigma_px=s, sigma_z_px=z) for s, z in product((1.0, 2.0), (0.0, 1.0))]


def noise2void_outputs(
    plants: dict[str, SimulatedPlant], work: Path, minutes: float
) -> tuple[dict[str, np.ndarray], dict]:
    """Noise2Void's result for each plant, trained on benchmarks/quality.py's training plants (its
    data folder, runs/default/data); a finished run in `work` is reused."""
    from harness.peers import noise2void_cached

    data = ROOT / "runs" / "default" / "data"
    split = json.loads((data / "split.json").read_text())
    info, outputs = noise2void_cached(
        {name: plant.observed for name, plant in plants.items()},
        work,
        [data / f"{n}_observed.tif" for n in split["train"]],
        data / f"{split['val'][0]}_observed.tif",
        minutes=minutes,
    )
    return outputs, info


def methods(
    plant: SimulatedPlant,
    tuned: dict,
    supervised: LoadedModel | None,
    ablation: LoadedModel | None = None,
    n2v: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    observed = plant.observed
    out = {
        "input": observed,
        "Gaussian smoothing (tuned)": gaussian_smoothing(observed, tuned["gaussian"]["sigma_px"]),
        "Richardson-Lucy (tuned)": richardson_lucy(
            observed, tuned["rl"]["sigma_px"], tuned["rl"]["iterations"]
        ),
    }
    if n2v is not None:
        out[N2V] = n2v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in SHIPPED.items():
            out[name] = dqlr.enhance(observed, model, voxel_size=(1.0, 0.25, 0.25))
        if ablation is not None:
            out[ABLATION] = dqlr.enhance(observed, ablation, voxel_size=(1.0, 0.25, 0.25), device="cpu")
        if supervised is not None:
            out[CEILING] = dqlr.enhance(observed, supervised, voxel_size=(1.0, 0.25, 0.25), device="cpu")
    out["clean stack (the segmentation's own limit)"] = plant.clean
    return out


def found_cells(truth: np.ndarray, labels: np.ndarray) -> set[int]:
    return set(matched_cells(truth, labels).tolist())


def deep(stack: np.ndarray) -> range:
    depth = stack.shape[0]
    return range(depth - depth // 3, depth)


def score(
    stack: np.ndarray, truth: np.ndarray, settings: SegmentationSettings, volume: bool = False
) -> dict[str, float]:
    """Mean scores over the deepest third; slice by slice only the deep slices are segmented."""
    if volume:
        segments = segment_stack(stack, settings, volume=True)
    else:
        segments = {z: segment_slice(stack[z], settings) for z in deep(stack)}
    rows = [slice_scores(truth[z], segments[z]) for z in deep(stack)]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supervised", type=Path, default=ROOT / "runs" / "supervised" / "best.pt")
    parser.add_argument(
        "--ablation",
        type=Path,
        default=ROOT / "runs" / "default" / "depth-aware-noquant" / "best.pt",
        help="the default's recipe without quantization (scripts/train_default_model.py --only "
        "depth-aware-noquant)",
    )
    parser.add_argument("--n2v-minutes", type=float, default=12.0, help="as benchmarks/quality.py")
    parser.add_argument("--n2v-work", type=Path, default=ROOT / "runs" / "default" / "n2v-segmentation")
    parser.add_argument("--skip-n2v", action="store_true")
    args = parser.parse_args()
    supervised = dqlr.load_model(args.supervised) if args.supervised.exists() else None
    ablation = dqlr.load_model(args.ablation) if args.ablation.exists() else None
    quality = json.loads((RESULTS / "quality.json").read_text())["settings"]
    tuned = {"gaussian": quality["gaussian_smoothing_tuned"], "rl": quality["richardson_lucy_tuned"]}
    validation, test = dqlr.simulate(seed=104), dqlr.simulate(seed=105)
    n2v: dict[str, np.ndarray] = {}
    n2v_info: dict = {}
    if not args.skip_n2v:
        n2v, n2v_info = noise2void_outputs(
            {"validation": validation, "test": test}, args.n2v_work, args.n2v_minutes
        )
    grid = [SegmentationSettings(sigma_px=s, h=h) for s, h in product(SIGMAS, DEPTHS)]
    chosen, on_validation = {}, {}
    chosen_volume, volume_validation = {}, {}
    for name, stack in methods(validation, tuned, supervised, ablation, n2v.get("validation")).items():
        found = [score(stack, validation.labels, g)["matched"] for g in grid]
        chosen[name], on_validation[name] = grid[int(np.argmax(found))], found
        print(f"{name}: sigma {chosen[name].sigma_px}, h {chosen[name].h} (validation {max(found):.3f})")
        found = [score(stack, validation.labels, g, volume=True)["matched"] for g in VOLUME_GRID]
        chosen_volume[name], volume_validation[name] = VOLUME_GRID[int(np.argmax(found))], found
        print(f"{name}, volume: {chosen_volume[name]} (validation {max(found):.3f})", flush=True)
    # the one setting for everything (dqlr evaluate's default): best on average over the methods a
    # user has (neither the clean stack nor the supervised ceiling)
    users = [v for n, v in on_validation.items() if not n.startswith("clean") and n != CEILING]
    average = np.mean(users, axis=0)
    common = grid[int(np.argmax(average))]
    results = methods(test, tuned, supervised, ablation, n2v.get("test"))
    clean_name = next(n for n in results if n.startswith("clean"))
    clean_found = [
        found_cells(test.labels[z], segment_slice(test.clean[z], chosen[clean_name]))
        for z in deep(test.clean)
    ]
    rows = {}
    for name, stack in results.items():
        row = score(stack, test.labels, chosen[name])
        found = [found_cells(test.labels[z], segment_slice(stack[z], chosen[name])) for z in deep(stack)]
        row["of_clean"] = float(
            sum(len(f & c) for f, c in zip(found, clean_found, strict=True)) / sum(map(len, clean_found))
        )
        row["sigma_px"], row["h"] = chosen[name].sigma_px, chosen[name].h
        row["psnr_deep"] = float(np.mean([psnr_affine(stack[z], test.clean[z]) for z in deep(stack)]))
        row["validation_matched"] = float(max(on_validation[name]))
        row["matched_common_setting"] = score(stack, test.labels, common)["matched"]
        row["volume"] = score(stack, test.labels, chosen_volume[name], volume=True)
        row["volume"]["sigma_px"] = chosen_volume[name].sigma_px
        row["volume"]["sigma_z_px"] = chosen_volume[name].sigma_z_px
        row["volume"]["validation_matched"] = float(max(volume_validation[name]))
        rows[name] = row
        print(name, row)
    RESULTS.mkdir(exist_ok=True)
    validation_grid = {
        name: {f"sigma {g.sigma_px:g}, h {g.h:g}": v for g, v in zip(grid, found, strict=True)}
        for name, found in on_validation.items()
    }
    # cells the slice only grazes: the part of the truth no per-slice segmentation is likely to find
    areas = np.concatenate([np.bincount(test.labels[z].ravel())[1:] for z in deep(test.labels)])
    areas = areas[areas > 0]
    grazed = float(np.mean(areas < 20))
    summary = {
        "test_plant_deepest_third": rows,
        "test_cells_under_20_px": grazed,
        "validation_cells_found": validation_grid,
        "validation_cells_found_volume": {
            name: {
                f"sigma {g.sigma_px:g}, sigma_z {g.sigma_z_px:g}": v
                for g, v in zip(VOLUME_GRID, found, strict=True)
            }
            for name, found in volume_validation.items()
        },
        "common_setting": {"sigma_px": common.sigma_px, "h": common.h},
        "noise2void": {
            k: n2v_info.get(k)
            for k in ("train_seconds", "epochs", "steps", "careamics_version", "torch_version")
        },
    }
    (RESULTS / "segmentation.json").write_text(json.dumps(summary, indent=2))
    more = sum(r["volume"]["matched"] > r["matched"] for r in rows.values())
    worse_rand = sum(r["volume"]["rand_error"] > r["rand_error"] for r in rows.values())
    lines = [
        "# Deep cells found by a standard segmentation",
        "",
        "Command: `.venv/bin/python benchmarks/segmentation.py`"
        + (
            " (with "
            + " and ".join(
                part
                for part, there in (
                    ("the supervised ceiling's model in runs/supervised", supervised),
                    ("the depth-aware ablation in runs/default/depth-aware-noquant", ablation),
                )
                if there
            )
            + ")"
            if supervised or ablation
            else ""
        )
        + ". Test plant (seed 105 of the six-plant "
        "layout, 48 x 256 x 256), deepest third (16 slices). Seeded watershed of "
        "`dqlr.evaluation.segmentation`; its smoothing (sigma, px) and seed depth (h, share of the "
        "slice's range) chosen per method on the validation plant (seed 104). A cell is found when "
        "a segment overlaps it at IoU >= 0.5."
        + (
            f" Noise2Void: CAREamics {n2v_info.get('careamics_version', '?')}, trained "
            f"{n2v_info.get('train_seconds', 0) / 60:.1f} min ({n2v_info.get('epochs')} epochs) on the "
            "training plants, a run of its own (quality.md's Noise2Void row comes from an earlier run "
            "of the same recipe)."
            if n2v
            else ""
        ),
        "",
        "| method | PSNR deep (dB) | cells found | of those found in the clean stack | adapted Rand error "
        "| split / slice | merged / slice | sigma, h | cells found, validation plant "
        "| cells found, one setting for all |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['psnr_deep']:.2f} | {r['matched']:.1%} | {r['of_clean']:.1%} "
            f"| {r['rand_error']:.3f} | {r['split']:.1f} "
            f"| {r['merged']:.1f} | {r['sigma_px']:g}, {r['h']:g} | {r['validation_matched']:.1%} "
            f"| {r['matched_common_setting']:.1%} |"
            for name, r in rows.items()
        ),
        "",
        "Lower is better for the Rand error, split and merged. The issue's target for the shipped "
        "default: at least 90 % of the true cells of the deepest third found. Of those true cells, "
        f"{grazed:.1%} are under 20 px in their slice (the slice grazes them); see the limits in "
        "`dqlr.evaluation.segmentation`.",
        "",
        f"One setting for all methods (the default of `dqlr evaluate --labels`): sigma {common.sigma_px:g} "
        f"px, h {common.h:g}, the best on the validation plant averaged over the methods (clean stack "
        "and the supervised ceiling left out); every method's validation score for every setting is in "
        "segmentation.json.",
        "",
        "## The stack segmented as one volume",
        "",
        "`segment_stack(..., volume=True)` (`dqlr evaluate --labels --volume`): one 3-D seeded watershed, "
        "each slice scaled by its own range; smoothing in the slice (sigma) and across slices (sigma_z, "
        "in slices) chosen per method on the validation plant, h 0.02. Scored slice by slice as above.",
        "",
        "| method | cells found | gain over slice by slice (points) | adapted Rand error | split / slice "
        "| merged / slice | sigma, sigma_z | cells found, validation plant |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['volume']['matched']:.1%} | {100 * (r['volume']['matched'] - r['matched']):+.1f} "
            f"| {r['volume']['rand_error']:.3f} | {r['volume']['split']:.1f} | {r['volume']['merged']:.1f} "
            f"| {r['volume']['sigma_px']:g}, {r['volume']['sigma_z_px']:g} "
            f"| {r['volume']['validation_matched']:.1%} |"
            for name, r in rows.items()
        ),
        "",
        f"The volume finds more cells than slice by slice for {more} of {len(rows)} methods; its "
        f"adapted Rand error is higher for {worse_rand} of {len(rows)}.",
    ]
    (RESULTS / "segmentation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
