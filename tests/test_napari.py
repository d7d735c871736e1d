"""The napari plugin in a real (hidden) napari viewer: the manifest, reader and writer, the Enhance
and Estimate widgets, the sample data. Needs a display with OpenGL; CI runs under Xvfb (.ci/run)."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from npe2 import PluginManifest

import dqlr
from dqlr.napari import layers as plugin_layers
from dqlr.napari.widgets import EnhanceWidget, EstimateWidget, enhance_in_thread

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "src" / "dqlr" / "napari" / "napari.yaml"
WAIT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer, npe2pm):
    """A hidden viewer that knows dqlr's manifest from this source tree (installed or not)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        pytest.fail("the napari tests need a display with OpenGL: run them under `xvfb-run -a` (see .ci/run)")
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield make_napari_viewer()


@pytest.fixture(scope="module")
def plant():
    return dqlr.simulate(shape=(6, 64, 64), seed=2)


def _hand_made() -> np.ndarray:
    """Not from the simulator: float32 blobs on a ramp, dimmer with depth, sharp end at the bottom."""
    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[0:5, 0:40, 0:48].astype(np.float32)
    stack = np.sin(y / 3.0) * np.cos(x / 4.0) * (1.0 + z) + 0.1 * rng.standard_normal((5, 40, 48))
    return stack.astype(np.float32)


def test_the_manifest_is_valid_and_packaged() -> None:
    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every command's python_name imports
    assert manifest.name == "dqlr"
    assert {w.command for w in manifest.contributions.widgets or []} == {"dqlr.enhance", "dqlr.estimate"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["napari.manifest"] == {"dqlr": "dqlr.napari:napari.yaml"}
    assert "napari/napari.yaml" in project["tool"]["setuptools"]["package-data"]["dqlr"]
    assert "napari" in project["project"]["optional-dependencies"]


@pytest.mark.parametrize("suffix", [".tif", ".ome.tif", ".zarr"])
def test_reader_and_writer_keep_data_and_voxel_size_as_scale(viewer, tmp_path, suffix) -> None:
    stack = _hand_made()
    source = dqlr.write_stack(tmp_path / f"hand{suffix}", stack, voxel_size=(0.7, 0.3, 0.3))
    (layer,) = viewer.open(str(source), plugin="dqlr")
    assert layer.name == "hand"
    assert np.allclose(layer.scale, (0.7, 0.3, 0.3))
    assert np.array_equal(np.asarray(layer.data), stack)
    viewer.layers.selection = {layer}
    (written,) = viewer.layers.save(str(tmp_path / f"copy{suffix}"), selected=True, plugin="dqlr")
    back = dqlr.read_stack(written)
    assert np.array_equal(back.data, stack) and back.data.dtype == np.float32
    assert np.allclose(back.voxel_size, (0.7, 0.3, 0.3))


def test_the_writer_refuses_the_layers_own_file_and_non_stacks(viewer, tmp_path) -> None:
    source = dqlr.write_stack(tmp_path / "in.tif", _hand_made(), voxel_size=(1.0, 0.5, 0.5))
    (layer,) = viewer.open(str(source), plugin="dqlr")
    meta = {"scale": layer.scale, "metadata": layer.metadata}
    with pytest.raises(dqlr.DqlrError, match="is also an input"):
        plugin_layers.write_image(str(source), layer.data, meta)
    with pytest.raises(dqlr.DqlrError, match="must be a 3-D ZYX stack"):
        plugin_layers.write_image(str(tmp_path / "flat.tif"), np.zeros((8, 8)), {"scale": (1, 1)})
    # napari's default scale (all 1) means "no voxel size", not 1 µm voxels
    written = plugin_layers.write_image(str(tmp_path / "plain.tif"), _hand_made(), {"scale": (1.0,) * 3})
    assert dqlr.read_stack(written[0]).voxel_size is None
    assert plugin_layers.get_reader(str(tmp_path / "notes.txt")) is None


def _finished(widget) -> bool:
    return widget.worker is not None and widget.run.enabled


def test_enhance_adds_a_layer_of_the_same_shape_scale_and_type(viewer, qtbot, plant) -> None:
    source = viewer.add_image(plant.observed, name="sam", scale=plant.voxel_size, translate=(0, 2, 3))
    widget = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = source
    widget.tile.value = 64
    widget.start()
    qtbot.waitUntil(lambda: _finished(widget), timeout=WAIT_MS)
    result = viewer.layers["sam dqlr"]
    assert result.data.shape == plant.observed.shape and result.data.dtype == plant.observed.dtype
    assert np.allclose(result.scale, plant.voxel_size) and np.allclose(result.translate, (0, 2, 3))
    assert np.mean(result.data != plant.observed) > 0.5
    assert (widget.progress.value, widget.progress.max) == (6, 6)
    # the same as the library gives: the widget adds nothing of its own
    options = dqlr.EnhanceOptions(tile=64, overlap=32, voxel_size=plant.voxel_size)
    expected = dqlr.enhance(plant.observed, options=options)
    assert np.array_equal(result.data, expected)
    widget.both_directions.value = True  # the second pass, from below, as the option gives it
    widget.start()
    qtbot.waitUntil(lambda: _finished(widget) and "sam dqlr [1]" in viewer.layers, timeout=WAIT_MS)
    both = dqlr.enhance(plant.observed, options=options.model_copy(update={"both_directions": True}))
    assert np.array_equal(viewer.layers["sam dqlr [1]"].data, both) and not np.array_equal(both, expected)


def test_enhance_can_be_cancelled(viewer, qtbot, plant) -> None:
    source = viewer.add_image(plant.observed, name="sam", scale=plant.voxel_size)
    widget = EnhanceWidget(viewer)
    widget.image.value = source
    widget.start()
    widget.stop()
    qtbot.waitUntil(lambda: _finished(widget), timeout=WAIT_MS)
    assert widget.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["sam"]


def test_a_bad_layer_gives_dqlrs_one_line_in_the_status(viewer, qtbot) -> None:
    source = viewer.add_image(np.zeros((2, 40, 40), np.float32), name="thin")
    widget = EnhanceWidget(viewer)
    widget.image.value = source
    widget.start()
    qtbot.waitUntil(lambda: _finished(widget), timeout=WAIT_MS)
    assert widget.status.value.startswith("failed: input stack: ") and "slices" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["thin"]


def test_the_worker_stops_between_slices(plant) -> None:
    """worker.quit() is seen after the slice in progress: nothing more is computed."""
    calls: list[tuple[int, int]] = []
    options = dqlr.EnhanceOptions(tile=64, overlap=16, voxel_size=plant.voxel_size)
    result = enhance_in_thread(
        plant.observed, "paper", options, None, lambda *c: calls.append(c), lambda: len(calls) >= 2
    )
    assert result is None and calls == [(1, 6), (2, 6)]


def test_enhance_with_a_model_file_and_adapt(viewer, qtbot, plant, monkeypatch, tmp_path) -> None:
    """--adapt's counterpart: the stack (with its scale) is handed to dqlr.adapt, whose model then
    enhances it. dqlr.adapt itself is tested in test_adapt.py; here it returns the paper model."""
    from dqlr.model.checkpoint import SHIPPED

    shipped = Path(dqlr.__file__).parent / "weights" / SHIPPED["paper"]
    seen = {}

    def adapt(stacks, out_dir, model, minutes, run, options):
        seen.update(stacks=stacks, model=model, minutes=minutes, voxel_size=options.voxel_size)
        return SimpleNamespace(best=shipped)

    monkeypatch.setattr(dqlr, "adapt", adapt)
    source = viewer.add_image(_hand_made(), name="hand", scale=(0.8, 0.25, 0.25))
    widget = EnhanceWidget(viewer)
    widget.image.value = source
    widget.model_file.value = shipped
    widget.adapt.value, widget.adapt_minutes.value = True, 0.5
    widget.start()
    qtbot.waitUntil(lambda: _finished(widget), timeout=WAIT_MS)
    assert seen["model"] == str(shipped) and seen["minutes"] == 0.5
    assert seen["voxel_size"] == (0.8, 0.25, 0.25) and np.array_equal(seen["stacks"][0], _hand_made())
    result = viewer.layers["hand dqlr"]
    assert result.data.dtype == np.float32 and np.allclose(result.scale, (0.8, 0.25, 0.25))
    assert np.array_equal(result.data, dqlr.enhance(_hand_made(), "paper", voxel_size=(0.8, 0.25, 0.25)))


def test_estimate_plots_one_point_per_slice(viewer, qtbot, plant) -> None:
    source = viewer.add_image(plant.observed, name="sam", scale=plant.voxel_size)
    widget = EstimateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = source
    widget.start()
    qtbot.waitUntil(lambda: _finished(widget), timeout=WAIT_MS)
    assert widget.canvas is not None
    axes = widget.canvas.figure.axes
    assert [ax.get_title() for ax in axes] == ["blur_sigma_px", "halo_fraction", "attenuation", "background"]
    expected = dqlr.estimate(plant.observed, voxel_size=plant.voxel_size)
    for ax in axes:
        depth, values = ax.lines[0].get_data()
        assert list(depth) == [1, 2, 3, 4, 5, 6]
        assert np.allclose(values, getattr(expected, ax.get_title()))
    assert widget.status.value.startswith("sam: ")


def test_the_sample_is_the_simulator_with_its_scale(viewer, monkeypatch) -> None:
    monkeypatch.setattr(plugin_layers, "SAMPLE_SHAPE", (6, 48, 64))  # seconds less than the real one
    added = viewer.open_sample("dqlr", "sam")
    assert [layer.name for layer in added] == ["SAM observed", "SAM clean", "SAM cells"]
    for layer in added:
        assert layer.data.shape == plugin_layers.SAMPLE_SHAPE
        assert np.allclose(layer.scale, (1.0, 0.25, 0.25))
    observed, clean, cells = added
    assert observed.data.dtype == np.uint16 and not np.array_equal(observed.data, clean.data)
    assert type(cells).__name__ == "Labels" and len(np.unique(cells.data)) > 3
