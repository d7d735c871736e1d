"""Enhancing whole files: every channel and time point (--channel all / --timepoint all) written
back in the input's layout with its metadata, and OME-Zarr pyramids with the input's levels."""

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_multiscale

from dqlr.cli import main
from dqlr.inference.enhance import enhance_file
from dqlr.io import read_layout, read_stack
from dqlr.io.pyramid import block_mean
from dqlr.model.checkpoint import LoadedModel, load_model
from tests.conftest import imagej_luts, save_tiny_model, write_imagej_hyperstack


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_file) -> LoadedModel:
    """Loaded once: its network's graph is made once for every test here."""
    return load_model(model_file)


def _four_stacks() -> np.ndarray:
    """T, C, Z, Y, X float data the simulator did not make: a simulated plant, its z-flip at half
    brightness and noisy copies for the second time point."""
    from dqlr.simulation import simulate_plant

    plant = simulate_plant(shape=(6, 32, 32), seed=4).observed.astype(np.float32)
    first = np.stack([plant, 0.5 * plant[::-1]])
    noise = np.random.default_rng(0).normal(0, 30, first.shape).astype(np.float32)
    return np.stack([first, first + noise])


def _imagej_input(path) -> np.ndarray:
    data = _four_stacks()
    tzcyx = data.transpose(0, 2, 1, 3, 4)  # ImageJ's TZCYX
    write_imagej_hyperstack(path, tzcyx, 0.35, 0.8, (0.0, 900.0, 0.0, 450.0), "sample = SAM 3")
    return data


def test_every_channel_and_time_point_equals_enhancing_each_alone(
    model_file, model, tmp_path, capsys
) -> None:
    source = tmp_path / "in.tif"
    _imagej_input(source)
    out = tmp_path / "out.tif"
    code = main(
        ["enhance", str(source), "-o", str(out), "--model", model_file, "--channel", "all"]
        + ["--timepoint", "all"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "24/24" in err and "/6 " not in err and "/12 " not in err  # one bar over every slice
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TZCYX"
        result = tif.asarray().transpose(0, 2, 1, 3, 4)  # T, C, Z, Y, X
        meta = tif.imagej_metadata
    assert result.shape == (2, 2, 6, 32, 32) and result.dtype == np.float32
    for t in range(2):
        for c in range(2):
            alone = tmp_path / f"t{t}c{c}.tif"
            enhance_file(source, alone, model, channel=c, timepoint=t)
            np.testing.assert_array_equal(result[t, c], read_stack(alone).data)
    assert not np.array_equal(result[0, 0], result[0, 1])
    assert meta["Ranges"] == (0.0, 900.0, 0.0, 450.0)
    np.testing.assert_array_equal(np.asarray(meta["LUTs"]), np.stack(imagej_luts()))
    assert meta["Labels"][:2] == ["t0 z0 c0", "t0 z0 c1"] and len(meta["Labels"]) == 24
    assert meta["Info"].startswith("sample = SAM 3\nenhanced by dqlr")
    assert read_stack(out, channel=1, timepoint=1).voxel_size == pytest.approx((0.8, 0.35, 0.35))
    # One channel picked: a ZYX stack with that channel's range, LUT and labels.
    meta = tifffile.TiffFile(tmp_path / "t1c1.tif").imagej_metadata
    assert (meta["min"], meta["max"]) == (0.0, 450.0) and meta["Labels"][0] == "t1 z0 c1"
    assert read_layout(tmp_path / "t1c1.tif").channels[0].color == "00FF00"


def test_every_time_point_of_one_channel_keeps_the_time_axis(model, tmp_path) -> None:
    source = tmp_path / "in.tif"
    _imagej_input(source)
    out = tmp_path / "out.ome.tif"
    enhance_file(source, out, model, channel=1, timepoint="all")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TZYX" and tif.series[0].shape == (2, 6, 32, 32)
    layout = read_layout(out)
    assert layout.axes == "TZYX"


def _ome_zarr_input(path) -> tuple[np.ndarray, list]:
    """A two-channel NGFF 0.5 image written by ome-zarr: 0.6 x 0.3 x 0.3 µm, z-flipped float
    data, three levels (1, 2, 2) and (2, 4, 4) below the first, named channels."""
    data = _four_stacks()[0][:, ::-1].copy()
    levels = [data, block_mean(data, (1, 1, 2, 2), np.float32)]
    levels.append(block_mean(levels[1], (1, 2, 2, 2), np.float32))
    transforms = [
        [{"type": "scale", "scale": [1.0, 0.6 * z, 0.3 * f, 0.3 * f]}] for z, f in ((1, 1), (1, 2), (2, 4))
    ]
    write_multiscale(
        levels,
        zarr.open_group(str(path), mode="w"),
        axes=[
            {"name": "c", "type": "channel"},
            *({"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"),
        ],
        coordinate_transformations=transforms,
        metadata={
            "omero": {
                "channels": [
                    {
                        "label": "membranes",
                        "color": "00FF00",
                        "window": {"start": 0, "end": 800, "min": 0, "max": 900},
                    },
                    {"label": "nuclei", "color": "FF00FF"},
                ]
            }
        },
    )
    return data, [level.shape for level in levels]


def _levels(path) -> tuple[list[np.ndarray], dict]:
    node = next(iter(Reader(parse_url(str(path), fmt=FormatV04()))()))
    return [np.asarray(level) for level in node.data], node.metadata


def test_a_multiscale_ome_zarr_comes_back_with_its_levels(model, tmp_path) -> None:
    source = tmp_path / "in.zarr"
    _, shapes = _ome_zarr_input(source)
    assert read_layout(source).scales == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 4.0)]
    out = tmp_path / "out.zarr"
    enhance_file(source, out, model, channel="all")
    levels, meta = _levels(out)
    assert [level.shape for level in levels] == shapes
    for c in range(2):
        alone = tmp_path / f"c{c}.zarr"
        enhance_file(source, alone, model, channel=c)
        np.testing.assert_array_equal(levels[0][c], read_stack(alone).data)
        single, single_meta = _levels(alone)  # one channel picked: a ZYX pyramid of the same levels
        assert [level.shape for level in single] == [s[1:] for s in shapes]
        assert single_meta["channel_names"] == [["membranes", "nuclei"][c]]
    np.testing.assert_allclose(levels[1], block_mean(levels[0], (1, 1, 2, 2), np.float32), rtol=1e-6)
    np.testing.assert_allclose(levels[2], block_mean(levels[1], (1, 2, 2, 2), np.float32), rtol=1e-6)
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    np.testing.assert_allclose(scales, [[1, 0.6, 0.3, 0.3], [1, 0.6, 0.6, 0.6], [1, 1.2, 1.2, 1.2]])
    assert meta["channel_names"] == ["membranes", "nuclei"]
    assert read_layout(out).channels[0].display_range == (0.0, 800.0)
    assert "enhanced by dqlr" in zarr.open_group(str(out), mode="r").attrs["dqlr"]["info"]


def test_ome_tiff_channel_names_are_carried_over(model, tmp_path) -> None:
    data = _four_stacks()[1]
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, data, metadata={"axes": "CZYX", "Channel": {"Name": ["membranes", "nuclei"]}})
    enhance_file(source, tmp_path / "all.ome.tif", model, channel="all")
    enhance_file(source, tmp_path / "one.ome.tif", model, channel=1)
    assert [c.name for c in read_layout(tmp_path / "all.ome.tif").channels] == ["membranes", "nuclei"]
    assert [c.name for c in read_layout(tmp_path / "one.ome.tif").channels] == ["nuclei"]
    assert tifffile.TiffFile(tmp_path / "all.ome.tif").series[0].axes == "CZYX"


def test_all_on_a_file_of_one_stack_is_that_stack(model, tmp_path) -> None:
    data = _four_stacks()[0, 0]
    tifffile.imwrite(tmp_path / "in.tif", data)
    enhance_file(tmp_path / "in.tif", tmp_path / "all.tif", model, channel="all", timepoint="all")
    enhance_file(tmp_path / "in.tif", tmp_path / "one.tif", model)
    np.testing.assert_array_equal(
        read_stack(tmp_path / "all.tif").data, read_stack(tmp_path / "one.tif").data
    )


def test_a_bad_channel_value_is_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["enhance", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--channel", "some"])
    assert exit_.value.code == 2 and "'some' is not a number or 'all'" in capsys.readouterr().err
