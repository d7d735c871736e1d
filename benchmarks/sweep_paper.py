#!/usr/bin/env python3
"""Make the paper-faithful DQLR as good as it honestly can be: a sweep on the validation plant.

    .venv/bin/python benchmarks/sweep_paper.py [--data runs/default/data] [--work runs/sweep]
        [--parallel 1] [--device auto] [--threads 0] [--only default,dim-8] [--epochs 20 --steps 100]

One axis at a time around the default config (paper mode, same training plants 0-3 and budget as the
shipped model): codebook size k, code dimension, latent resolution, lambda_ssim, lambda_quant, the
number n of predicted slices, the recurrent cell and the training budget. Every run is scored on the
validation plant alone (plant 4: deepest-third affine-fitted PSNR / SSIM against its clean stack).
Stage two trains the combination of the winning value of each axis (a value wins when it beats the
default by more than --margin dB). The test plant is never read here; benchmarks/quality.py scores the
chosen model on it. Writes sweep_paper.json / .md into --results (benchmarks/results by default) after
every finished run, so an interrupted sweep still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# axis -> {variant name: overrides}; "default" is the shared centre of every axis.
AXES: dict[str, dict[str, dict[str, object]]] = {
    "codebook size k": {"k-32": {"model.codebook_size": 32}, "k-512": {"model.codebook_size": 512}},
    "code dimension": {"dim-8": {"model.latent_channels": 8}, "dim-64": {"model.latent_channels": 64}},
    "latent resolution": {"down-2": {"model.downsample": 2}, "down-8": {"model.downsample": 8}},
    "lambda_ssim": {"ssim-0": {"loss.lambda_ssim": 0.0}, "ssim-3": {"loss.lambda_ssim": 3.0}},
    "lambda_quant": {"quant-0.25": {"loss.lambda_quant": 0.25}, "quant-4": {"loss.lambda_quant": 4.0}},
    "predicted slices n": {"next-0": {"model.predict_next": 0}, "next-4": {"model.predict_next": 4}},
    "recurrent cell": {"convlstm": {"model.recurrent": "convlstm"}},
    "training budget": {"budget-2x": {"train.epochs": 40}},
}

# Stage three, written after reading stage one on the validation plant (its best single change was
# lambda_ssim = 0): seed replicates to size the run-to-run noise, and that change joined with each runner-up.
FOLLOW_UP: dict[str, dict[str, object]] = {
    "default-seed1": {"train.seed": 1},
    "ssim-0-seed1": {"loss.lambda_ssim": 0.0, "train.seed": 1},
    "ssim-0+dim-8": {"loss.lambda_ssim": 0.0, "model.latent_channels": 8},
    "ssim-0+next-4": {"loss.lambda_ssim": 0.0, "model.predict_next": 4},
    "ssim-0+quant-0.25": {"loss.lambda_quant": 0.25, "loss.lambda_ssim": 0.0},
    "ssim-0+k-32": {"loss.lambda_ssim": 0.0, "model.codebook_size": 32},
    "ssim-0+convlstm": {"loss.lambda_ssim": 0.0, "model.recurrent": "convlstm"},
    "ssim-0+dim-8+next-4": {"loss.lambda_ssim": 0.0, "model.latent_channels": 8, "model.predict_next": 4},
}


def variants() -> dict[str, dict[str, object]]:
    table: dict[str, dict[str, object]] = {"default": {}}
    for axis in AXES.values():
        table.update(axis)
    return table


def run_variant(
    name: str, overrides: dict, data: str, work: str, budget: dict, device: str, threads: int
) -> dict:
    """Train one variant (resuming a run left unfinished) and score its best checkpoint on the
    validation plant. A plain function so a process pool (or a Dask task) can call it."""
    import json as _json

    from dqlr.config import Config, RunOptions
    from dqlr.evaluation.metrics import per_slice, thirds
    from dqlr.inference.enhance import enhance
    from dqlr.io import read_stack
    from dqlr.model.checkpoint import load_model
    from dqlr.runtime import pick_device
    from dqlr.training.run import train

    # one folder per budget, so a run of another budget is never resumed as if it were this one
    data_dir = Path(data)
    run = Path(work) / f"e{budget['epochs']}_s{budget['steps']}" / name
    split = _json.loads((data_dir / "split.json").read_text())
    train_files = [data_dir / f"{n}_observed.tif" for n in split["train"]]
    val_name = split["val"][0]
    val_file = data_dir / f"{val_name}_observed.tif"
    settings = {
        "train.epochs": budget["epochs"],
        "train.steps_per_epoch": budget["steps"],
    }
    settings.update(overrides)
    if "train.epochs" in overrides:  # the budget axis scales the budget given on the command line
        factor = int(overrides["train.epochs"]) / Config().train.epochs
        settings["train.epochs"] = int(budget["epochs"] * factor)
    config = Config().with_overrides(settings)
    started = time.perf_counter()
    resume = (run / "last.pt").exists()
    result = train(
        train_files,
        run,
        None if resume else config,
        val_stack=val_file,
        resume=resume,
        run=RunOptions(device=device, num_threads=threads, progress=False),
    )
    train_seconds = time.perf_counter() - started
    model = load_model(result.best, device=pick_device(device))
    observed = read_stack(val_file).data
    clean = read_stack(data_dir / f"{val_name}_clean.tif").data
    started = time.perf_counter()
    output = enhance(observed, model, device=device)
    infer_seconds = time.perf_counter() - started
    scores = per_slice(output, clean)
    base = per_slice(observed, clean)
    last = result.history[-1]
    return {
        "name": name,
        "overrides": overrides,
        "epochs": model.config.train.epochs,  # as trained (read back from the checkpoint)
        "steps_per_epoch": model.config.train.steps_per_epoch,
        "best_epoch": int(model.meta["epoch"]),
        "psnr": thirds(scores["psnr"]),
        "ssim": thirds(scores["ssim"]),
        "input_psnr": thirds(base["psnr"]),
        "codes_used": last.get("val_codes_used"),
        "perplexity": last.get("val_perplexity"),
        "train_seconds": train_seconds,
        "infer_seconds": infer_seconds,
        "device": str(pick_device(device)),
    }


def combine(results: dict[str, dict], margin: float) -> dict[str, object]:
    """Overrides of the winning value of each axis (by deepest-third PSNR on the validation plant)."""
    centre = results["default"]["psnr"]["deep"]
    chosen: dict[str, object] = {}
    for axis in AXES.values():
        scored = [(results[n]["psnr"]["deep"], n) for n in axis if n in results]
        if scored:
            best_psnr, best = max(scored)
            if best_psnr > centre + margin:
                chosen.update(axis[best])
    return chosen


def summary_notes(results: dict[str, dict]) -> list[str]:
    """What the table says, derived from it so that it never goes stale."""
    deep = {n: r["psnr"]["deep"] for n, r in results.items()}
    notes = []
    if "combined" in results:
        notes.append(f"- combined = the winning value of every axis: {results['combined']['overrides']}")
    for name in FOLLOW_UP:
        base = name.removesuffix("-seed1")
        if name.endswith("-seed1") and name in deep and base in deep:
            notes.append(
                f"- run-to-run noise: {base} with seed 0 / 1: {deep[base]:.2f} / {deep[name]:.2f} dB deep "
                f"({abs(deep[base] - deep[name]):.2f} dB apart)"
            )
    if deep:
        best = max(deep, key=deep.get)
        notes.append(f"- best on the validation plant: {best} ({deep[best]:.2f} dB deep)")
    return notes


# The choice made from the table above (hand-written, printed under it).
DECISION = (
    "- decision (by hand, from this table): lambda_ssim = 0 is the largest single gain and the only one "
    "repeated with a second seed (19.70 dB with both seeds; the default gave 19.13 and 19.32). The "
    "runners-up (code dimension 8, n = 4, lambda_quant 0.25, k = 32; one seed each) add at most "
    "0.04 dB on top of it, and all axis winners together (combined, 19.34 dB) fall below it. The shipped "
    "paper-mode model therefore takes lambda_ssim = 0 alone (scripts/train_default_model.py, "
    "variant paper-swept)."
)


def write_results(results: dict[str, dict], path: Path, budget: dict, notes: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / ".sweep_paper.json.tmp"
    tmp.write_text(json.dumps({"budget": budget, "runs": results, "notes": notes}, indent=2))
    tmp.replace(path / "sweep_paper.json")
    if "default" not in results:
        return
    centre = results["default"]
    lines = [
        "# Paper-faithful DQLR: sweep on the validation plant",
        "",
        "Command: `.venv/bin/python benchmarks/sweep_paper.py` (see its docstring). Paper mode, trained "
        "on plants 0-3 (seeds 100-105 layout), scored on validation plant 4 only: affine-fitted PSNR / "
        "SSIM against its clean stack, deepest third unless said. The test plant is not used here.",
        f"Budget per run: {budget['epochs']} epochs x {budget['steps']} steps of 16 windows "
        "(budget-2x: twice that). 'train (s)' is wall time while 'at once' runs shared the device "
        "(`--parallel`); the recorded table was made on a lent H100 with 16 CPU cores "
        "(`--parallel 17 --threads 1 --device cuda`, then `--only <FOLLOW_UP names> --parallel 8`).",
        "",
        f"Input (validation plant): deep {centre['input_psnr']['deep']:.2f} dB, "
        f"top {centre['input_psnr']['top']:.2f} dB.",
        "",
        "| variant | change | epochs | PSNR deep | vs default | SSIM deep | PSNR top | codes used "
        "| train (s) | at once | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["default"] + [n for n in variants() if n != "default"] + ["combined", *FOLLOW_UP]
    for name in order + [n for n in results if n not in order]:
        if name not in results:
            continue
        r = results[name]
        change = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(default config)"
        codes = "-" if r.get("codes_used") is None else f"{r['codes_used']:.0f}"
        lines.append(
            f"| {name} | {change} | {r['epochs']} | {r['psnr']['deep']:.2f} | "
            f"{r['psnr']['deep'] - centre['psnr']['deep']:+.2f} | {r['ssim']['deep']:.3f} | "
            f"{r['psnr']['top']:.2f} | {codes} | {r['train_seconds']:.0f} | {r.get('parallel', '-')} | "
            f"{r['device']} |"
        )
    lines += [""] + notes + summary_notes(results)
    if "ssim-0-seed1" in results and "combined" in results:
        lines.append(DECISION)
    (path / "sweep_paper.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "default" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (processes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--margin", type=float, default=0.05, help="dB a value must win by")
    parser.add_argument("--only", help="comma-separated variant names (stage one only)")
    parser.add_argument("--no-combined", action="store_true", help="skip stage two")
    parser.add_argument("--export", type=Path, help="folder for the default, combined and best models")
    parser.add_argument("--force", action="store_true", help="replace a record made with another budget")
    args = parser.parse_args()
    if not (args.data / "split.json").exists():
        from dqlr.simulation import simulate_dataset

        simulate_dataset(args.data, plants=6, seed=100)
    budget = {"epochs": args.epochs, "steps": args.steps}
    table = {**variants(), **FOLLOW_UP}
    names = args.only.split(",") if args.only else list(variants())
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(table)}")
    record = args.results / "sweep_paper.json"
    results: dict[str, dict] = {}
    if record.exists():  # keep what an earlier (interrupted) sweep with the same budget measured
        previous = json.loads(record.read_text())
        if previous.get("budget") == budget:
            results = previous["runs"]
        elif not args.force:
            parser.error(
                f"{record} holds a sweep with budget {previous.get('budget')}; pass --results elsewhere "
                "(e.g. for a quick try) or --force to replace it"
            )
    notes: list[str] = []
    common = (str(args.data), str(args.work), budget, args.device, args.threads)
    work = args.work / f"e{budget['epochs']}_s{budget['steps']}"

    def run_all(jobs: dict[str, dict]) -> None:
        todo = {n: o for n, o in jobs.items() if n not in results}
        context = get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(max_workers=max(1, args.parallel), mp_context=context) as pool:
            futures = {pool.submit(run_variant, n, o, *common): n for n, o in todo.items()}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    results[name] = future.result()
                except Exception as error:  # one failed variant must not lose the others
                    notes.append(f"- {name} failed: {type(error).__name__}: {error}")
                    print(f"FAILED {name}: {error}", flush=True)
                    continue
                r = results[name]
                r["parallel"] = min(args.parallel, len(todo))
                print(
                    f"{name}: deep {r['psnr']['deep']:.2f} dB, SSIM {r['ssim']['deep']:.3f}, "
                    f"{r['train_seconds']:.0f} s",
                    flush=True,
                )
                write_results(results, args.results, budget, notes)

    run_all({n: table[n] for n in names})
    if not args.no_combined and "default" in results and "combined" not in results:
        chosen = combine(results, args.margin)
        missing = [n for n in variants() if n not in results]
        if missing:
            notes.append(f"- combined not trained: no result for {', '.join(missing)}")
        elif chosen:
            run_all({"combined": chosen})
        else:
            notes.append("- no axis beat the default by the margin; nothing to combine")
    write_results(results, args.results, budget, notes)
    best = max(results, key=lambda n: results[n]["psnr"]["deep"]) if results else None
    if args.export and best:
        from dqlr.model.checkpoint import export_model

        for name in dict.fromkeys(["default", "combined", best]):
            checkpoint = work / name / "best.pt"
            if name not in results:
                continue
            if checkpoint.exists():
                export_model(checkpoint, args.export / f"sweep_{name}.pt")
            else:  # measured by an earlier call on another machine
                print(f"not exported: {name} (no {checkpoint})")
    print((args.results / "sweep_paper.md").read_text() if results else "no results")
    print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
