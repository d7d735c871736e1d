"""Layouts: axes, channel names, display ranges, LUTs and slice labels read and written back."""

import numpy as np
import pytest
import tifffile

from dqlr.errors import DqlrError
from dqlr.io import create_stack_writer, read_layout, read_stack
from tests.conftest import imagej_luts, write_imagej_hyperstack

SHAPE = (2, 6, 2, 32, 32)  # T, Z, C, Y, X: ImageJ's order


def imagej_hyperstack(path, dtype=np.uint16) -> np.ndarray:
    """A 2-time-point, 2-channel ImageJ hyperstack with ranges, LUTs, labels and Info."""
    data = np.random.default_rng(1).integers(0, 4000, SHAPE).astype(dtype)
    write_imagej_hyperstack(path, data, 0.4, 1.5, (10.0, 3000.0, 0.0, 4000.0), "objective = 40x")
    return data


def _copy(source, target, **kwargs):
    """Write the stacks of `source` to `target` through StackWriter with its layout."""
    layout = read_layout(source)
    first = read_stack(source, channel=0, timepoint=0)
    with create_stack_writer(
        target, first.shape, first.dtype, first.voxel_size, info=first.info, layout=layout, **kwargs
    ) as writer:
        for t in range(layout.size("T")):
            for c in range(layout.size("C")):
                stack = read_stack(source, channel=c, timepoint=t).data
                for z in range(stack.shape[0]):
                    writer[t, c, z] = stack[z]
    return layout


def test_imagej_hyperstack_round_trip_keeps_layout_and_display(tmp_path) -> None:
    data = imagej_hyperstack(tmp_path / "in.tif")
    layout = _copy(tmp_path / "in.tif", tmp_path / "out.tif")
    assert layout.axes == "TZCYX" and layout.shape == SHAPE
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == "TZCYX"
        np.testing.assert_array_equal(tif.asarray(), data)
        meta = tif.imagej_metadata
    assert meta["Ranges"] == (10.0, 3000.0, 0.0, 4000.0)
    np.testing.assert_array_equal(np.asarray(meta["LUTs"]), np.stack(imagej_luts()))
    assert meta["Labels"][:3] == ["t0 z0 c0", "t0 z0 c1", "t0 z1 c0"] and len(meta["Labels"]) == 24
    assert meta["Info"] == "objective = 40x"
    assert read_stack(tmp_path / "out.tif", channel=1, timepoint=1).voxel_size == pytest.approx(
        (1.5, 0.4, 0.4)
    )


def test_one_channel_picked_keeps_its_own_range_lut_and_labels(tmp_path) -> None:
    imagej_hyperstack(tmp_path / "in.tif")
    picked = read_layout(tmp_path / "in.tif").select(channel=1, timepoint=0)
    assert picked.axes == "ZYX" and picked.shape == (6, 32, 32)
    assert picked.channels[0].display_range == (0.0, 4000.0) and picked.channels[0].color == "00FF00"
    assert list(picked.labels) == [f"t0 z{z} c1" for z in range(6)]
    out = tmp_path / "one.tif"
    with create_stack_writer(out, (6, 32, 32), np.uint16, layout=picked) as writer:
        for z in range(6):
            writer[z] = np.zeros((32, 32), np.uint16)
    meta = tifffile.TiffFile(out).imagej_metadata
    assert (meta["min"], meta["max"]) == (0.0, 4000.0) and meta["Labels"][5] == "t0 z5 c1"
    assert read_layout(out).channels[0].color == "00FF00"


def test_ome_tiff_channel_names_round_trip_in_the_files_order(tmp_path) -> None:
    data = np.random.default_rng(2).normal(0, 1, (2, 5, 24, 20)).astype(np.float32)  # C, Z, Y, X
    names = ["membranes", "nuclei"]
    tifffile.imwrite(
        tmp_path / "in.ome.tif",
        data,
        metadata={"axes": "CZYX", "Channel": {"Name": names}, "PhysicalSizeZ": 0.8},
    )
    layout = _copy(tmp_path / "in.ome.tif", tmp_path / "out.ome.tif")
    assert [c.name for c in layout.channels] == names
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert tif.series[0].axes == "CZYX"
        np.testing.assert_array_equal(tif.asarray(), data)
    assert [c.name for c in read_layout(tmp_path / "out.ome.tif").channels] == names


def test_imagej_to_zarr_and_back_keeps_ranges_and_colours(tmp_path) -> None:
    """Across formats: ImageJ's ranges and LUTs become omero windows and colours (TCZYX, NGFF's
    order), and come back as ranges and LUTs."""
    data = imagej_hyperstack(tmp_path / "in.tif")
    _copy(tmp_path / "in.tif", tmp_path / "mid.zarr")
    mid = read_layout(tmp_path / "mid.zarr")
    assert mid.axes == "TCZYX" and mid.shape == (2, 2, 6, 32, 32)
    assert [c.display_range for c in mid.channels] == [(10.0, 3000.0), (0.0, 4000.0)]
    assert [c.color for c in mid.channels] == ["FF00FF", "00FF00"]
    np.testing.assert_array_equal(
        read_stack(tmp_path / "mid.zarr", channel=1, timepoint=1).data, data[1, :, 1]
    )
    _copy(tmp_path / "mid.zarr", tmp_path / "back.tif")
    meta = tifffile.TiffFile(tmp_path / "back.tif").imagej_metadata
    assert meta["Ranges"] == (10.0, 3000.0, 0.0, 4000.0)
    np.testing.assert_array_equal(np.asarray(meta["LUTs"]), np.stack(imagej_luts()))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), data)


def test_a_writer_of_several_stacks_discards_an_incomplete_output(tmp_path) -> None:
    imagej_hyperstack(tmp_path / "in.tif")
    layout = read_layout(tmp_path / "in.tif")
    writer = create_stack_writer(tmp_path / "out.tif", (6, 32, 32), np.uint16, layout=layout)
    writer[1, 1, 5] = np.ones((32, 32), np.uint16)
    with pytest.raises(DqlrError, match="only 1 of 24 slices"):
        writer.close()
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(DqlrError, match="do not fit"):
        create_stack_writer(tmp_path / "out.tif", (5, 32, 32), np.uint16, layout=layout)
