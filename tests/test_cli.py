"""End-to-end command-line checks: real commands, real files, exit codes and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dqlr.cli import main
from dqlr.io import read_stack
from dqlr.model import DQLR
from dqlr.model.checkpoint import save_checkpoint
from tests.conftest import tiny_config


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_simulate_writes_the_six_plant_layout(tmp_path, capsys) -> None:
    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--plants", "6", "--shape", "4", "32", "32"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 4 and len(split["val"]) == 1 and len(split["test"]) == 1
    stack = read_stack(out / "plant00_observed.tif")
    assert stack.data.shape == (4, 32, 32) and stack.data.dtype == np.uint16
    assert stack.voxel_size == pytest.approx((1.0, 0.25, 0.25))
    capsys.readouterr()
    assert main(["simulate", str(out), "--plants", "6", "--shape", "4", "32", "32"]) == 2
    assert "--force" in _error_line(capsys)


def test_train_then_enhance_from_the_command_line(tmp_path, capsys) -> None:
    sim = tmp_path / "sim"
    main(["simulate", str(sim), "--plants", "2", "--shape", "8", "40", "40"])
    config = tmp_path / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_config().with_overrides({"train.epochs": 1}).to_dict()))
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(sim / "plant00_observed.tif"),
            str(sim / "plant01_observed.tif"),
            "--out",
            str(run),
            "--config",
            str(config),
        ]
    )
    assert code == 0 and (run / "best.pt").is_file()
    out = tmp_path / "enhanced.tif"
    code = main(
        [
            "enhance",
            str(sim / "plant01_observed.tif"),
            "-o",
            str(out),
            "--model",
            str(run / "best.pt"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert read_stack(out).data.shape == (8, 40, 40)
    capsys.readouterr()
    code = main(
        ["enhance", str(sim / "plant01_observed.tif"), "-o", str(out), "--model", str(run / "best.pt")]
    )
    assert code == 2  # one input: its problem is the command's, in one line
    assert "--force" in _error_line(capsys)


def test_bad_config_value_exits_with_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  batch_size: 0\n")
    code = main(["train", "x.tif", "--out", str(tmp_path / "r"), "--config", str(config)])
    assert code == 2
    line = _error_line(capsys)
    assert "train.batch_size" in line and line.startswith("dqlr: error:")


def test_console_script_reports_missing_file(tmp_path) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    save_checkpoint(tmp_path / "m.pt", {"config": config.to_dict(), "model": DQLR(config.model).state_dict()})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dqlr",
            "enhance",
            str(tmp_path / "missing.tif"),
            "-o",
            str(tmp_path / "o.tif"),
            "--model",
            str(tmp_path / "m.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "missing.tif" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "o.tif").exists()


def test_evaluate_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    sim = tmp_path / "sim"
    main(["simulate", str(sim), "--plants", "1", "--shape", "6", "48", "48"])
    capsys.readouterr()
    out_json = tmp_path / "e.json"
    code = main(
        [
            "evaluate",
            str(sim / "plant00_observed.tif"),
            "--reference",
            str(sim / "plant00_clean.tif"),
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "deep" in table
    values = json.loads(out_json.read_text())
    psnr = values["result"]["thirds"]["psnr"]
    assert psnr["top"] > psnr["deep"]
    assert main(["evaluate", str(sim / "plant00_observed.tif"), "--json", str(out_json)]) == 2


def test_resume_refuses_options_it_would_ignore(tmp_path, capsys) -> None:
    sim = tmp_path / "sim"
    main(["simulate", str(sim), "--plants", "1", "--shape", "8", "40", "40"])
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config().with_overrides({"train.epochs": 1}).to_dict()))
    stack, run = str(sim / "plant00_observed.tif"), str(tmp_path / "run")
    assert main(["train", stack, "--out", run, "--config", str(config)]) == 0
    capsys.readouterr()
    for extra in (
        ["--epochs", "3"],
        ["--mode", "depth-aware"],
        ["--set", "train.epochs=3"],
        ["--config", str(config)],
    ):
        assert main(["train", stack, "--out", run, "--resume", *extra]) == 2
        line = _error_line(capsys)
        assert "--resume" in line and extra[0] in line, line


def test_enhance_help_states_every_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["enhance", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--tile", 512), ("--overlap", 48), ("--batch-size", 4), ("--predict-next", 0)):
        assert option in text and f"(default: {default})" in text


def test_every_option_of_every_command_has_help(capsys) -> None:
    from dqlr.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "enhance" in a.choices).choices
    missing = [
        f"{name} {action.dest}"
        for name, command in commands.items()
        for action in command._actions
        if not action.help
    ]
    assert not missing, missing


def test_help_and_input_errors_do_not_wait_for_torch(tmp_path) -> None:
    """torch takes seconds to import; `--help` and a bad input must answer without it."""
    code = (
        "import sys; from dqlr.cli import main\n"
        "try:\n    main(['enhance', '--help'])\nexcept SystemExit:\n    pass\n"
        f"rc = main(['enhance', r'{tmp_path / 'missing.tif'}', '-o', r'{tmp_path / 'out.tif'}'])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["2", "False"], out.stdout[-300:]
    assert "missing.tif: file not found" in out.stderr


def test_version_and_models(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"dqlr {version('dqlr')}"
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["paper", "noquant", "depth-aware (default)"]
    assert "mode depth-aware; quantized; trained on 4 stack(s)" in lines[2]
    assert "voxel size 1 x 0.25 x 0.25 µm" in lines[2]


def test_convert_rewrites_an_old_model(tmp_path, capsys) -> None:
    config = tiny_config()
    old = config.to_dict()
    old.pop("mode")
    old["train"].update(device="cpu", mode="paper")
    old["model"]["condition"] = False
    network = DQLR(config.model)
    torch.save(
        {"format": "dqlr-checkpoint", "version": 1, "config": old, "model": network.state_dict()},
        tmp_path / "a.pt",
    )
    from dqlr.io import write_stack

    write_stack(tmp_path / "x.tif", np.zeros((4, 32, 32), np.uint16))
    assert (
        main(
            [
                "enhance",
                str(tmp_path / "x.tif"),
                "-o",
                str(tmp_path / "y.tif"),
                "--model",
                str(tmp_path / "a.pt"),
            ]
        )
        == 2
    )
    assert "dqlr convert" in _error_line(capsys)
    assert main(["convert", str(tmp_path / "a.pt"), "-o", str(tmp_path / "b.pt")]) == 0
    from dqlr.model.checkpoint import load_model

    assert load_model(tmp_path / "b.pt").config == config


def test_a_bad_run_option_is_one_line(tmp_path, capsys) -> None:
    sim = tmp_path / "sim"
    main(["simulate", str(sim), "--plants", "1", "--shape", "4", "32", "32"])
    capsys.readouterr()
    code = main(["train", str(sim / "plant00_observed.tif"), "--out", str(tmp_path / "r"), "--threads", "-1"])
    assert code == 2 and "num_threads" in _error_line(capsys)


def test_enhance_adapt_fine_tunes_on_the_input_then_enhances(tmp_path, capsys) -> None:
    from dqlr.model.checkpoint import load_model

    sim = tmp_path / "sim"
    main(["simulate", str(sim), "--plants", "1", "--shape", "12", "64", "64"])
    stack, out = str(sim / "plant00_observed.tif"), tmp_path / "out.tif"
    code = main(
        [
            "enhance",
            stack,
            "-o",
            str(out),
            "--mode",
            "paper",
            "--adapt",
            "--adapt-minutes",
            "0.05",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and read_stack(out).data.shape == (12, 64, 64)
    adapted = tmp_path / "out.adapted" / "best.pt"
    assert adapted.is_file() and load_model(adapted).meta["init"] == "paper"
    assert "adapted model" in capsys.readouterr().out
    # the adapted model is a model like any other: fine-tune it further with train --init
    run = tmp_path / "more"
    config = tmp_path / "c.yaml"
    import yaml

    from dqlr.model.checkpoint import load_model as _load

    saved = _load(adapted).config.with_overrides({"train.epochs": 1, "train.steps_per_epoch": 2})
    config.write_text(yaml.safe_dump(saved.to_dict()))
    assert main(["train", stack, "--out", str(run), "--init", str(adapted), "--config", str(config)]) == 0
    assert load_model(run / "last.pt").meta["init"] == "best.pt"
