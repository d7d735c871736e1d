"""bioimage.io packages (dqlr.model.package, dqlr.inference.export, `dqlr export`): a package that
bioimageio.spec validates and bioimageio.core runs, and that `dqlr enhance --model` accepts."""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from dqlr.cli import main
from dqlr.errors import DqlrError
from dqlr.io import read_stack, write_stack
from dqlr.model.checkpoint import build_network, load_model, save_checkpoint
from dqlr.model.package import META_FILE, SOURCE_FILE, normalize_like_bioimageio, write_package
from tests.conftest import tiny_config

VOXEL = (1.0, 0.4, 0.4)  # not the simulator's 0.25 µm


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny depth-aware model, a float example stack the simulator did not make, and the package
    `dqlr export` wrote from them (tested by bioimageio.core on the way)."""
    folder = tmp_path_factory.mktemp("package")
    config = tiny_config(base_channels=4, latent_channels=4).with_overrides({"mode": "depth-aware"})
    torch.manual_seed(3)
    network = build_network(config)
    model = save_checkpoint(
        folder / "tiny.pt", {"config": config.to_dict(), "model": network.state_dict(), "voxel_size": VOXEL}
    )
    rng = np.random.default_rng(5)
    stack = (ndimage.gaussian_filter(rng.normal(size=(4, 32, 32)), 1.0) * 50 + 20).astype(np.float32)
    example = write_stack(folder / "example.tif", stack, voxel_size=VOXEL)
    package = folder / "model.zip"
    code = main(["export", str(model), "--format", "bioimageio", "-o", str(package), "--stack", str(example)])
    return {"folder": folder, "model": model, "example": example, "package": package, "code": code}


def _rdf(package: Path) -> dict[str, Any]:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def test_export_writes_a_package_that_bioimageio_validates_and_runs(
    made: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    assert made["code"] == 0  # the export ran bioimageio.core's test and it passed
    description = load_description(made["package"], perform_io_checks=True)
    assert isinstance(description, ModelDescr), description.validation_summary.format()
    (raw,), (restored,) = description.inputs, description.outputs
    assert [str(a.id) for a in raw.axes] == ["batch", "channel", "z", "y", "x"]
    assert [str(a.id) for a in restored.axes] == ["batch", "channel", "z", "y", "x"]
    assert [a.scale for a in raw.axes[2:]] == list(VOXEL)  # type: ignore[union-attr]
    scale_range = [p for p in raw.preprocessing if p.id == "scale_range"][0]
    assert [str(a) for a in scale_range.kwargs.axes] == ["z", "y", "x"]  # per stack, not per slice
    assert (scale_range.kwargs.min_percentile, scale_range.kwargs.max_percentile) == (0.5, 99.8)
    assert description.weights.pytorch_state_dict is not None and description.weights.torchscript is not None
    assert str(description.license) == "BSD-3-Clause"
    assert "quantized representation" in description.cite[0].text.lower()
    assert description.covers and description.documentation is not None
    import imageio.v3 as iio

    with zipfile.ZipFile(made["package"]) as archive:
        cover = iio.imread(archive.read("cover.png"))
    assert cover.shape == (32, 64) and cover.dtype == np.uint8 and cover[:, :32].std() > 10  # input | output
    assert [str(a.source.path) for a in description.attachments] == [META_FILE]  # type: ignore[union-attr]


def test_the_test_output_is_what_the_packaged_network_computes(made: dict[str, Any], tmp_path: Path) -> None:
    rdf = _rdf(made["package"])
    state = rdf["weights"]["pytorch_state_dict"]
    with zipfile.ZipFile(made["package"]) as archive:
        archive.extract(SOURCE_FILE, tmp_path)
        weights = torch.load(io.BytesIO(archive.read(state["source"])), weights_only=True)
        scripted = torch.jit.load(io.BytesIO(archive.read(rdf["weights"]["torchscript"]["source"])))
        given = np.load(io.BytesIO(archive.read("test_input.npy")))
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
    spec = importlib.util.spec_from_file_location("packaged", tmp_path / SOURCE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the package's own file, without dqlr
    network = module.StackNetwork(**state["architecture"]["kwargs"])
    network.load_state_dict(weights)
    example = read_stack(made["example"]).data
    assert given.shape == (1, 1, *example.shape) and expected.shape == given.shape
    np.testing.assert_array_equal(given[0, 0], example)  # the example, whole (it is small)
    normalised = torch.from_numpy(normalize_like_bioimageio(given, 0.5, 99.8))
    with torch.no_grad():
        np.testing.assert_array_equal(network.eval()(normalised).numpy(), expected)
        np.testing.assert_allclose(scripted(normalised).numpy(), expected, atol=1e-6)


def test_enhance_with_the_package_equals_enhance_with_the_model_file(made: dict[str, Any]) -> None:
    folder = made["folder"]
    for name, model in (("from_pt.tif", made["model"]), ("from_zip.tif", made["package"])):
        assert main(["enhance", str(made["example"]), "-o", str(folder / name), "--model", str(model)]) == 0
    from_pt, from_zip = read_stack(folder / "from_pt.tif").data, read_stack(folder / "from_zip.tif").data
    assert from_zip.dtype == np.float32
    np.testing.assert_array_equal(from_zip, from_pt)
    loaded = load_model(made["package"])
    assert loaded.config.mode == "depth-aware" and tuple(loaded.meta["voxel_size"]) == VOXEL


def test_a_depth_aware_package_carries_its_curve(made: dict[str, Any]) -> None:
    model = load_model(made["model"])
    given = read_stack(made["example"]).data
    curved = write_package(model, made["folder"] / "curved.zip", given, np.array([0.0, 0.75], np.float32))
    assert _rdf(curved)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["levels"] == [0.0, 0.75]
    assert not any(_rdf(made["package"])["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["levels"])
    outputs = []
    for package in (made["package"], curved):  # the exported one: level 0 throughout (no trend found)
        with zipfile.ZipFile(package) as archive:
            outputs.append(np.load(io.BytesIO(archive.read("test_output.npy"))))
    np.testing.assert_array_equal(outputs[0][:, :, 0], outputs[1][:, :, 0])  # level 0 on top in both
    assert not np.array_equal(outputs[0][:, :, 1:], outputs[1][:, :, 1:])


def test_foreign_zips_are_refused_in_one_line(
    made: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(DqlrError, match="not a bioimage.io package"):
        load_model(plain)
    foreign = tmp_path / "foreign.zip"
    rdf = _rdf(made["package"])
    rdf["attachments"] = []
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf))
    with pytest.raises(DqlrError, match="not made by `dqlr export`"):
        load_model(foreign)
    code = main(["enhance", str(made["example"]), "-o", str(tmp_path / "out.tif"), "--model", str(foreign)])
    assert code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_export_refuses_an_output_that_is_not_a_zip_or_exists(
    made: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", str(made["model"]), "--stack", str(made["example"]), "--no-test"]
    assert main([*args, "-o", str(made["folder"] / "model.tar")]) == 2
    assert ".zip" in capsys.readouterr().err
    assert main([*args, "-o", str(made["package"])]) == 2
    assert "exists" in capsys.readouterr().err


def test_export_in_python_is_the_command(made: dict[str, Any], tmp_path: Path) -> None:
    """dqlr.export writes what `dqlr export` writes (the same files, the same curve) and gives the
    example's notes as DqlrWarnings; an unknown format is one line."""
    import dqlr

    with pytest.warns(dqlr.DqlrWarning):  # the example is flat: no trend with depth to condition on
        path = dqlr.export(made["model"], tmp_path / "api.zip", stack=made["example"], test=False)
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(made["package"]) as theirs:
        assert sorted(ours.namelist()) == sorted(theirs.namelist())
    assert _rdf(path)["inputs"] == _rdf(made["package"])["inputs"]
    with pytest.raises(DqlrError, match="unknown format 'onnx'"):
        dqlr.export(made["model"], tmp_path / "other.zip", format="onnx")  # type: ignore[arg-type]
