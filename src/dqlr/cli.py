"""`dqlr ...` commands: parse arguments, call the API, turn DqlrError into one line and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, get_args

import yaml

from dqlr.atomic import refuse_existing
from dqlr.errors import DqlrError, DqlrWarning


def _simulate(args: argparse.Namespace) -> None:
    from dqlr.simulation import simulate_dataset

    result = simulate_dataset(
        args.out,
        plants=args.plants,
        shape=tuple(args.shape),
        voxel_size=tuple(args.voxel_size),
        seed=args.seed,
        noise=args.noise,
        degradation=args.degradation,
        dtype=args.dtype,
        force=args.force,
    )
    print(
        f"wrote {args.plants} simulated plant(s) to {args.out}; split: "
        + ", ".join(f"{k}={v}" for k, v in result["split"].items())
    )


def _overrides(pairs: list[str]) -> dict[str, object]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise DqlrError(f"--set {pair}: write it as section.key=value, e.g. train.epochs=3")
        values[key] = yaml.safe_load(value)
    return values


def _train(args: argparse.Namespace) -> None:
    from dqlr.api import train
    from dqlr.config import RunOptions, load_config

    config = None
    changes = [
        flag
        for flag, value in (
            ("--config", args.config),
            ("--set", args.set),
            ("--epochs", args.epochs),
            ("--mode", args.mode),
        )
        if value
    ]
    if args.resume and changes:
        raise DqlrError(
            f"--resume continues the run with its saved config; drop {', '.join(changes)} "
            "(it would be ignored) or train into a new --out"
        )
    if not args.resume:
        config = load_config(args.config)
        overrides = _overrides(args.set or [])
        if args.epochs:
            overrides["train.epochs"] = args.epochs
        if args.mode:
            overrides["mode"] = args.mode
        if overrides:
            config = config.with_overrides(overrides)
    run = RunOptions.of(device=args.device, num_threads=args.threads, amp=not args.full_precision)
    result = train(
        args.stacks,
        args.out,
        config,
        val_stack=args.val,
        resume=args.resume,
        run=run,
        init=args.init,
        teacher=args.teacher,
    )
    if result.rank == 0:  # under torchrun, once
        print(f"checkpoints: {result.best} (best), {result.last} (last)")


def _enhance(args: argparse.Namespace) -> int:
    from dqlr.api import enhance_files
    from dqlr.config import EnhanceOptions

    options = EnhanceOptions.of(**{name: getattr(args, name) for name in EnhanceOptions.model_fields})
    if args.mode and args.model:
        raise DqlrError("give either --model or --mode, not both")
    model = args.mode or args.model
    if args.adapt:
        model = _adapted_model(args, model, options)
    with contextlib.ExitStack() as cluster:
        client = None
        if args.scheduler:  # dask is imported only here
            from dqlr.inference.distributed import open_client

            client = cluster.enter_context(open_client(args.scheduler))
        outcomes = enhance_files(
            args.inputs,
            args.output,
            model,
            options,
            channel=args.channel,
            timepoint=args.timepoint,
            force=args.force,
            resume=args.resume,
            client=client,
        )
    if len(outcomes) == 1 and outcomes[0].error:  # one input: its problem is the command's
        raise DqlrError(outcomes[0].error)
    failed = [o for o in outcomes if o.error]
    for outcome in outcomes:
        for note in outcome.notes:
            print(f"dqlr: note: {outcome.input}: {note}", file=sys.stderr)
        if outcome.error:
            print(f"failed: {outcome.error}", file=sys.stderr)
        elif outcome.skipped:
            print(f"{outcome.input}: skipped, {', '.join(map(str, outcome.outputs))} complete (--resume)")
        else:
            print(f"{outcome.input} -> {', '.join(map(str, outcome.outputs))}")
    print(f"enhanced {len(outcomes) - len(failed)} of {len(outcomes)} stack(s)")
    return 1 if failed else 0


def _index_or_all(text: str) -> int | str:
    """--channel / --timepoint: a number, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'all'") from None


def _adapted_model(args: argparse.Namespace, model: str | None, options: Any) -> Path:
    """--adapt: fine-tune on the inputs themselves; the model lands next to the output."""
    from dqlr.api import adapt
    from dqlr.atomic import refuse_existing
    from dqlr.config import RunOptions
    from dqlr.inference.enhance import expand_inputs

    output = Path(args.output)
    out_dir = output.parent / f"{output.name.split('.')[0]}.adapted"
    refuse_existing(out_dir, args.force)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    run = RunOptions.of(device=args.device)
    inputs = expand_inputs(args.inputs)
    result = adapt(inputs, out_dir, model, minutes=args.adapt_minutes, run=run, options=options)
    print(
        f"adapted model: {result.best} ({'interrupted; ' if result.interrupted else ''}reuse it with --model)"
    )
    return result.best


def _evaluate(args: argparse.Namespace) -> None:
    from dqlr.evaluation.metrics import evaluate_files, format_table

    for path in (args.json, args.csv):
        if path is not None:
            refuse_existing(path, args.force)
    evaluation = evaluate_files(
        args.result,
        args.reference,
        args.input,
        args.json,
        args.csv,
        args.labels,
        args.segment,
        args.volume,
        args.segmenter,
    )
    print(format_table(evaluation))


def _report(args: argparse.Namespace) -> None:
    from dqlr.reporting.report import report_files

    results = {}
    for item in args.result:
        name, sep, path = item.partition("=")
        if not sep:
            raise DqlrError(f"--result {item}: write it as NAME=PATH, e.g. dqlr=enhanced.tif")
        results[name] = path
    path = report_files(
        args.input, results, args.output, args.reference, args.force, labels=args.labels, volume=args.volume
    )
    print(f"report: {path}")


def _estimate(args: argparse.Namespace) -> None:
    from dqlr import api
    from dqlr.reporting.figures import degradation_figure

    stack = api.read_stack(args.stack, channel=args.channel, timepoint=args.timepoint, lazy=True)
    estimate = api.estimate(stack)
    for note in estimate.notes:
        print(f"dqlr: note: {args.stack}: {note}", file=sys.stderr)
    if not estimate.reliable:
        print(
            f"dqlr: note: {args.stack}: the blur by depth could not be measured; a depth-aware model "
            "enhances this stack without depth conditioning",
            file=sys.stderr,
        )
    print(
        f"noise model: gain {estimate.gain:.4g}, read noise {estimate.read_noise:.4g}, "
        f"offset {estimate.offset:.4g}; reference slices {estimate.reference_slices}"
    )
    print(f"{'slice':>5} {'extra blur (px)':>15} {'halo':>6} {'attenuation':>11} {'background':>10}")
    for z in range(len(estimate.depth_index)):
        print(
            f"{z + 1:>5} {estimate.blur_sigma_px[z]:>15.2f} {estimate.halo_fraction[z]:>6.2f} "
            f"{estimate.attenuation[z]:>11.2f} {estimate.background[z]:>10.1f}"
        )
    if args.plot:
        refuse_existing(args.plot, args.force)
        print(f"plot: {degradation_figure(estimate, args.plot)}")


def _demo(args: argparse.Namespace) -> None:
    from dqlr.demo import run_demo

    picture = run_demo(args.out, device=args.device)
    print(f"picture: {picture}")


def _config(args: argparse.Namespace) -> None:
    from dqlr.config import Config, config_yaml

    print(config_yaml(Config()), end="")


def _convert(args: argparse.Namespace) -> None:
    from dqlr.model.checkpoint import convert_checkpoint

    print(f"converted: {convert_checkpoint(args.model, args.output, force=args.force)}")


def _train_segmenter(args: argparse.Namespace) -> None:
    from dqlr.api import train_segmenter

    model = train_segmenter(
        args.stacks,
        args.labels,
        args.output,
        steps=args.steps,
        minutes=args.minutes,
        depth_share=args.depth_share,
        force=args.force,
    )
    trained = model.trained_on
    print(f"segmenter: {args.output} ({trained['steps']} steps on {trained['slices']} slices)")


def _models(args: argparse.Namespace) -> None:
    from dqlr.model.checkpoint import DEFAULT_MODEL, SHIPPED, describe_model, load_model

    for name in SHIPPED:
        model = load_model(name)
        marker = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{marker}: {Path(str(model.path)).name}; {describe_model(model)}")
    print(
        "The shipped models learnt from simulated Arabidopsis SAM membrane stacks (`dqlr simulate`); "
        "give a name to --model, or train your own with `dqlr train`."
    )


def _export(args: argparse.Namespace) -> None:
    from dqlr.api import export

    path = export(
        args.model,
        args.output,
        args.format,
        args.stack,
        name=args.name,
        authors=args.author,
        license=args.license,
        force=args.force,
        test=args.test,
    )
    tested = "validated and tested by bioimageio.core" if args.test else "validated; not test-run"
    print(f"bioimage.io package: {path} ({tested})")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dqlr {version('dqlr')}"
    except PackageNotFoundError:  # a source tree that was never installed
        return "dqlr (version unknown: not installed)"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: its help shows the defaults (see _Help)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"formatter_class": _Help, **kwargs})


def build_parser() -> argparse.ArgumentParser:
    from dqlr.config import EnhanceOptions

    parser = argparse.ArgumentParser(
        prog="dqlr", description="Restore deep, degraded slices of confocal z-stacks (DQLR)."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    p = sub.add_parser("simulate", help="write simulated SAM stacks (observed, clean, labels)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--plants", type=int, default=1, help="number of plants (stacks) to simulate")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(48, 256, 256), metavar=("Z", "Y", "X"), help="stack size"
    )
    p.add_argument(
        "--voxel-size", type=float, nargs=3, default=(1.0, 0.25, 0.25), metavar=("Z", "Y", "X"), help="µm"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed makes the same plants)")
    p.add_argument("--noise", type=float, default=1.0, help="noise level multiplier")
    p.add_argument("--degradation", type=float, default=1.0, help="depth degradation multiplier")
    p.add_argument("--dtype", default="uint16", choices=["uint8", "uint16", "float32"], help="pixel type")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(run=_simulate)

    p = sub.add_parser("train", help="train a DQLR model on noisy stacks (self-supervised)")
    p.add_argument("stacks", nargs="+", type=Path, help="noisy stacks to learn from (no clean data needed)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics)")
    p.add_argument("--config", type=Path, help="YAML config (see `dqlr config`)")
    p.add_argument("--val", type=Path, help="validation stack (default: the last training stack)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--init", metavar="MODEL", help="fine-tune this model (a .pt file or a shipped name)")
    p.add_argument(
        "--teacher",
        metavar="MODEL",
        help="distil: learn this trained model's outputs (e.g. a smaller, faster network from a larger one)",
    )
    p.add_argument("--epochs", type=int, help="number of epochs (default: the config's, 20)")
    p.add_argument(
        "--mode",
        choices=["paper", "depth-aware"],
        help="paper: reproduce the observed slices (the paper); depth-aware: also learn to undo "
        "the stack's own depth degradation from its sharp upper slices",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: auto; not saved with the model)")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for this run (default: 0, torch's choice)"
    )
    p.add_argument(
        "--full-precision",
        action="store_true",
        help="train in float32 throughout (default: mixed precision on GPUs, bf16 or fp16, and "
        "bf16 on CPUs that compute it natively, about twice as fast)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.batch_size=4",
    )
    p.set_defaults(run=_train)

    p = sub.add_parser("enhance", help="enhance stacks with a trained (or the shipped) model")
    p.add_argument("inputs", nargs="+", type=Path, help="stacks or folders of stacks")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output file (one input) or folder (several)"
    )
    p.add_argument(
        "--model",
        help="checkpoint, or a shipped model: default, paper, depth-aware, noquant "
        "(default: the shipped default)",
    )
    p.add_argument(
        "--mode",
        choices=["paper", "depth-aware"],
        help="use the shipped model of this training mode instead of the shipped default",
    )
    for name, field in EnhanceOptions.model_fields.items():
        flag, described = f"--{name.replace('_', '-')}", field.description
        if isinstance(field.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=described)
        elif name == "voxel_size":
            p.add_argument(flag, type=float, nargs=3, metavar=("Z", "Y", "X"), help=field.description)
        elif name in ("sharp_end", "engine"):
            p.add_argument(flag, choices=get_args(field.annotation), default=field.default, help=described)
        else:
            metavar = "N" if name == "predict_next" else None
            p.add_argument(
                flag, type=type(field.default), default=field.default, metavar=metavar, help=described
            )
    p.add_argument(
        "--channel",
        type=_index_or_all,
        help="channel to enhance in a multi-channel file, or 'all': every one, written back as channels",
    )
    p.add_argument(
        "--timepoint",
        type=_index_or_all,
        help="time point to enhance in a time series, or 'all': every one, written back as a series",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument(
        "--adapt",
        action="store_true",
        help="first fine-tune the model on the inputs themselves (self-supervised, no clean data); "
        "the adapted model is written next to the output as NAME.adapted/best.pt",
    )
    p.add_argument(
        "--scheduler",
        metavar="local:N|ADDRESS",
        help="enhance on a Dask cluster: local:N starts N worker processes on this machine; an "
        "address (tcp://host:8786) joins a running scheduler whose workers see the same files",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip outputs that exist (every write is atomic, so they are complete) and enhance the rest",
    )
    p.add_argument(
        "--adapt-minutes",
        type=float,
        default=3.0,
        metavar="M",
        help="wall-time budget of --adapt (default: 3)",
    )
    p.set_defaults(run=_enhance)

    p = sub.add_parser("evaluate", help="quality by depth, with or without a clean reference")
    p.add_argument("result", type=Path, help="the stack to judge (e.g. an enhanced stack)")
    p.add_argument("--reference", type=Path, help="clean stack (simulations): PSNR and SSIM")
    p.add_argument("--input", type=Path, help="the raw stack, to show the gain over it")
    p.add_argument(
        "--labels",
        type=Path,
        help="true cell labels (simulations): segment every slice and score the cells found by depth",
    )
    p.add_argument(
        "--segment",
        action="store_true",
        help="without labels: segment every slice (of --input too) and count the cells by depth",
    )
    p.add_argument(
        "--volume",
        action="store_true",
        help="with --labels or --segment: one 3-D seeded watershed of the whole stack (read into "
        "memory) instead of one per slice; finds more cells",
    )
    p.add_argument(
        "--segmenter",
        type=Path,
        help="with --labels or --segment: cut each slice along the walls a trained wall network "
        "finds (a file of `dqlr train-segmenter`) instead of the intensity watershed",
    )
    p.add_argument("--json", type=Path, help="write all numbers as JSON")
    p.add_argument("--csv", type=Path, help="write per-slice numbers as CSV")
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--csv files")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("report", help="one HTML file comparing results side by side and by depth")
    p.add_argument("input", type=Path, help="the raw stack")
    p.add_argument(
        "--result",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a result to compare (repeat), e.g. --result dqlr=enhanced.tif",
    )
    p.add_argument("--reference", type=Path, help="clean stack (simulations)")
    p.add_argument(
        "--labels",
        type=Path,
        help="true cell labels (simulations): segment every slice, plot the cells found by depth, overlays",
    )
    p.add_argument(
        "--volume",
        action="store_true",
        help="with --labels: segment each stack as one volume (a 3-D seeded watershed) instead of per slice",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="report .html")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.set_defaults(run=_report)

    p = sub.add_parser("estimate", help="estimate a stack's degradation by depth, from it alone")
    p.add_argument("stack", type=Path, help="the stack to measure")
    p.add_argument("--plot", type=Path, help="write the curves as a PNG")
    p.add_argument("--channel", type=int, help="channel of a multi-channel file (default: 0)")
    p.add_argument("--timepoint", type=int, help="time point of a time series (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    p.set_defaults(run=_estimate)

    p = sub.add_parser("demo", help="simulate a stack, enhance it, write a picture")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the stacks and picture")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(run=_demo)

    p = sub.add_parser("config", help="print the default config as YAML")
    p.set_defaults(run=_config)

    p = sub.add_parser("models", help="list the shipped models and what they were trained on")
    p.set_defaults(run=_models)

    p = sub.add_parser("export", help="write a model as a bioimage.io package (.zip)")
    p.add_argument("model", help="a .pt file or a shipped model: default, paper, depth-aware, noquant")
    p.add_argument("--format", choices=["bioimageio"], default="bioimageio", help="package format")
    p.add_argument("-o", "--output", type=Path, required=True, help="the package, NAME.zip")
    p.add_argument(
        "--stack",
        type=Path,
        help="example stack: gives the test tensor and, for a depth-aware model, the depth curve "
        "the package carries (default: a simulated stack)",
    )
    p.add_argument("--name", default="DQLR z-stack restoration", help="the package's name")
    p.add_argument("--author", action="append", help="an author of the model (repeat; default: dqlr user)")
    p.add_argument("--license", default="BSD-3-Clause", help="SPDX licence identifier of the weights")
    p.add_argument(
        "--test",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run bioimageio.core's test of the written package on its test tensors",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "train-segmenter", help="train a learned segmenter (wall network + watershed) for evaluate"
    )
    p.add_argument("stacks", type=Path, nargs="+", help="ZYX membrane stacks")
    p.add_argument("--labels", type=Path, nargs="+", required=True, help="their cell labels, one per stack")
    p.add_argument("-o", "--output", type=Path, required=True, help="the segmenter file (.pt)")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes")
    p.add_argument(
        "--depth-share",
        type=float,
        default=2 / 3,
        help="train on this upper share of each stack (default: 2/3, the good slices)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(run=_train_segmenter)

    p = sub.add_parser("convert", help="rewrite a model file of an older dqlr in today's format")
    p.add_argument("model", type=Path, help="the old model file (read safely: weights only)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the new model file")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(run=_convert)
    return parser


def _notes_as_lines(show: Any) -> Any:
    """A showwarning that prints DqlrWarnings as one-line notes (no source location) and leaves
    every other warning to `show`."""

    def showwarning(message: Warning | str, category: type[Warning], *rest: Any, **more: Any) -> None:
        if issubclass(category, DqlrWarning):
            print(f"dqlr: note: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **more)

    return showwarning


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DqlrWarning)
            warnings.showwarning = _notes_as_lines(warnings.showwarning)
            code = args.run(args)
    except DqlrError as error:
        print(f"dqlr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dqlr: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
