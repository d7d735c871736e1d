"""The public API: twelve functions, always functions, callable twice, and the README's code runs."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dqlr

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = (
    "adapt",
    "enhance",
    "train",
    "read_stack",
    "write_stack",
    "simulate",
    "estimate",
    "evaluate",
    "export",
    "load_model",
)


def test_public_names_are_functions_and_never_modules() -> None:
    from dqlr import enhance, estimate, evaluate, load_model, read_stack, simulate, train, write_stack

    imported = (enhance, estimate, evaluate, load_model, read_stack, simulate, train, write_stack)
    for function in imported:
        assert inspect.isfunction(function), function
    # importing every layer binds submodules on the package; the public names must survive that
    import dqlr.inference.enhance
    import dqlr.training.trainer  # noqa: F401

    for name in FUNCTIONS:
        assert inspect.isfunction(getattr(dqlr, name)), name
        assert name in dqlr.__all__
    assert not any(inspect.ismodule(getattr(dqlr, name)) for name in dqlr.__all__)


def test_each_function_works_twice(tmp_path: Path) -> None:
    from dqlr import enhance, estimate, evaluate, load_model, read_stack, simulate, train, write_stack

    for attempt in range(2):
        plant = simulate(shape=(12, 64, 64), seed=attempt)
        assert plant.observed.shape == (12, 64, 64) and plant.observed.dtype == np.uint16
        path = write_stack(tmp_path / f"stack{attempt}.tif", plant.observed, voxel_size=(1.0, 0.25, 0.25))
        stack = read_stack(path)
        assert np.array_equal(stack.data, plant.observed) and stack.voxel_size == (1.0, 0.25, 0.25)
        model = load_model("paper")
        result = enhance(stack.data, model, device="cpu")
        assert result.shape == stack.data.shape and result.dtype == stack.data.dtype
        scores = evaluate(result, reference=plant.clean, input=plant.observed)
        assert set(scores["result"]["thirds"]["psnr"]) == {"top", "middle", "deep"}
        degradation = estimate(simulate(shape=(24, 128, 128), seed=attempt).observed)
        assert len(degradation.blur_sigma_px) == 24
        assert degradation.blur_sigma_px[-1] > degradation.blur_sigma_px[0]
        config = dqlr.Config().with_overrides(
            {
                "model.base_channels": 8,
                "model.latent_channels": 8,
                "model.predict_next": 1,
                "data.crop": 32,
                "train.epochs": 1,
                "train.steps_per_epoch": 3,
                "train.batch_size": 2,
                "train.val_windows": 2,
            }
        )
        run = dqlr.RunOptions(progress=False, device="cpu")
        trained = train([plant.observed], tmp_path / f"run{attempt}", config, run=run)
        assert trained.best.is_file() and len(trained.history) == 1


def test_enhance_validates_its_settings() -> None:
    stack = dqlr.simulate(shape=(4, 32, 32)).observed
    with pytest.raises(dqlr.DqlrError, match="tile"):
        dqlr.enhance(stack, "paper", tile=-3)
    with pytest.raises(dqlr.DqlrError, match="unknown setting 'tiles'"):
        dqlr.enhance(stack, "paper", tiles=64)


def test_enhance_leaves_global_torch_state_alone() -> None:
    stack = dqlr.simulate(shape=(4, 48, 48)).observed
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    dqlr.enhance(stack, "paper", device="cpu")
    assert torch.equal(torch.rand(2), expected)
    assert torch.get_num_threads() == threads
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0  # denormals are not left flushed


def test_importing_and_drawing_never_touch_pyplot_or_the_backend(tmp_path: Path) -> None:
    """A Jupyter or napari user's matplotlib backend must survive dqlr (import and figures)."""
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
import dqlr, dqlr.cli, dqlr.reporting.report
from dqlr.reporting.figures import slice_figure
import numpy as np
slice_figure({{"a": np.random.rand(3, 16, 16)}}, r"{tmp_path / "fig.png"}")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_import_is_light() -> None:
    """`import dqlr` (and so `dqlr --help`) must not wait for torch."""
    code = "import sys, dqlr, dqlr.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of the README runs as written, in a folder holding my_stack.tif (the
    cluster recipes, which need SLURM or Kubernetes, are fenced as ```py and only shown)."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README shows the Python API"
    plant = dqlr.simulate(shape=(12, 96, 96), seed=4)
    dqlr.write_stack(tmp_path / "my_stack.tif", plant.observed, voxel_size=(1.0, 0.25, 0.25))
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = dqlr.read_stack(tmp_path / "out.tif")
    assert out.data.shape == plant.observed.shape and out.data.dtype == plant.observed.dtype
    assert out.voxel_size == (1.0, 0.25, 0.25)


def test_enhance_takes_what_read_stack_gives_with_its_voxel_size(tmp_path: Path) -> None:
    """A Stack's voxel size comes along (a stack at 0.5 µm pixels is resized to the model's 0.25 µm
    as when given explicitly); a path gets a one-line error that names what to use."""
    import warnings

    stack = dqlr.simulate(shape=(6, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=2)
    dqlr.write_stack(tmp_path / "coarse.tif", stack.observed, voxel_size=(1.0, 0.5, 0.5))
    read = dqlr.read_stack(tmp_path / "coarse.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dqlr.DqlrWarning)
        given = dqlr.enhance(read, "paper", device="cpu")
        explicit = dqlr.enhance(read.data, "paper", device="cpu", voxel_size=(1.0, 0.5, 0.5))
        unknown = dqlr.enhance(read.data, "paper", device="cpu")
    assert given.shape == read.data.shape and given.dtype == read.data.dtype
    np.testing.assert_array_equal(given, explicit)
    assert not np.array_equal(given, unknown)
    with pytest.raises(dqlr.DqlrError, match="not the path .* use dqlr.read_stack first"):
        dqlr.enhance(str(tmp_path / "coarse.tif"))


def test_enhance_refuses_settings_it_cannot_honour() -> None:
    stack = dqlr.simulate(shape=(4, 32, 32)).observed
    with pytest.raises(dqlr.DqlrError, match="predict_next needs an output file"):
        dqlr.enhance(stack, "paper", predict_next=2)
    with pytest.raises(dqlr.DqlrError, match="overlap 300 must be at most half the tile"):
        dqlr.enhance(stack, "paper", tile=256, overlap=300)


def test_an_old_config_file_names_where_its_keys_went(tmp_path: Path) -> None:
    from dqlr.config import load_config

    path = tmp_path / "old.yaml"
    path.write_text("train:\n  mode: depth-aware\n")
    with pytest.raises(
        dqlr.DqlrError, match="'train.mode' is no longer a config key; use the top-level key 'mode'"
    ):
        load_config(path)
    path.write_text("train:\n  device: cuda\n")
    with pytest.raises(dqlr.DqlrError, match="run option now: pass --device"):
        load_config(path)


def _cli_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = [line.split("#")[0].split(">")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("dqlr ")]


def test_readme_commands_are_accepted_by_the_cli() -> None:
    """Every `dqlr ...` line of the README parses: no option there is stale or misspelt."""
    import shlex

    from dqlr.cli import build_parser

    lines = _cli_lines((ROOT / "README.md").read_text())
    assert len(lines) >= 8
    parser = build_parser()
    for line in lines:
        plain = line.replace("[", "").replace("]", "")  # [--option value] marks an optional part
        words = ["x.tif" if word == "..." else word for word in shlex.split(plain)[1:]]
        parser.parse_args(words)  # exits (fails the test) on an unknown option


def test_enhance_files_is_the_command_in_python(tmp_path: Path) -> None:
    """One path or a folder, the command's outcomes; the same slices as dqlr.enhance."""
    plant = dqlr.simulate(shape=(8, 48, 48), seed=6).observed
    folder = tmp_path / "in"
    dqlr.write_stack(folder / "a.tif", plant, voxel_size=(1.0, 0.25, 0.25))
    dqlr.write_stack(folder / "b.tif", plant[::-1].astype(np.float32), voxel_size=(2.0, 0.5, 0.5))
    [one] = dqlr.enhance_files(str(folder / "a.tif"), tmp_path / "a_out.tif", "paper", progress=False)
    assert one.error is None and one.outputs == [tmp_path / "a_out.tif"]
    expected = dqlr.enhance(plant, "paper", voxel_size=(1.0, 0.25, 0.25))
    assert np.array_equal(dqlr.read_stack(tmp_path / "a_out.tif").data, expected)
    outcomes = dqlr.enhance_files([folder], tmp_path / "out", "paper", progress=False, tile=32, overlap=8)
    assert [o.outputs for o in outcomes] == [[tmp_path / "out" / "a.tif"], [tmp_path / "out" / "b.tif"]]
    assert dqlr.read_stack(tmp_path / "out" / "b.tif").data.dtype == np.float32
    again = dqlr.enhance_files([folder], tmp_path / "out", "paper", progress=False, resume=True)
    assert [o.skipped for o in again] == [True, True]
