"""Round trips, lazy reading, streaming writes and every kind of bad input for dqlr.io."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from dqlr.errors import DqlrError
from dqlr.io import (
    Stack,
    StackView,
    check_finite,
    create_stack_writer,
    read_stack,
    stack_format,
    write_stack,
)
from tests.conftest import RecordedReads

VOXEL = (0.7, 0.13, 0.11)
NAMES = ["stack.tif", "stack.ome.tif", "stack.zarr"]
DTYPES = [np.uint8, np.uint16, np.float32]


def make_stack(dtype: type, shape: tuple[int, int, int] = (5, 24, 20), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100.0, 30.0, shape).astype(dtype)
    top = np.iinfo(dtype).max
    return rng.integers(0, top, shape, endpoint=True).astype(dtype)


def leftovers(folder: Path) -> list[str]:
    """Temporary names the writers use; none may survive a write, good or bad."""
    return [n for n in os.listdir(folder) if ".tmp-" in n or ".old-" in n]


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(DqlrError) as info:
        read_stack(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    # Only the explanation: pytest's folder names repeat the test name ("truncated", "2d").
    return message.replace(str(path), "<path>")


# ------------------------------------------------------------------------------ formats, round trip


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.tif", "tiff"),
        ("a.TIFF", "tiff"),
        ("a.ome.tif", "ome-tiff"),
        ("dir/a.OME.TIFF", "ome-tiff"),
        ("a.zarr", "zarr"),
    ],
)
def test_stack_format(name: str, expected: str) -> None:
    assert stack_format(name) == expected


@pytest.mark.parametrize("name", ["a.png", "a.xyz", "a"])
def test_stack_format_unknown(name: str) -> None:
    with pytest.raises(DqlrError, match=r"\.ome\.tif"):
        stack_format(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    data = make_stack(dtype)
    out = write_stack(tmp_path / name, data, VOXEL)
    assert out == tmp_path / name
    stack = read_stack(out)
    assert isinstance(stack.data, np.ndarray)
    assert stack.dtype == np.dtype(dtype)
    assert stack.shape == data.shape
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size == pytest.approx(VOXEL, rel=1e-4)
    assert stack.path == str(out)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.float64])
def test_other_dtypes_pass_through(tmp_path: Path, name: str, dtype: type) -> None:
    data = make_stack(dtype, (3, 8, 9))
    stack = read_stack(write_stack(tmp_path / name, data, VOXEL))
    assert stack.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size == pytest.approx(VOXEL, rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_voxel_size_is_none(tmp_path: Path, name: str) -> None:
    stack = read_stack(write_stack(tmp_path / name, make_stack(np.uint16)))
    assert stack.voxel_size is None


def test_imagej_file_opens_at_right_scale(tmp_path: Path) -> None:
    """What Fiji reads: ImageJ hyperstack, slices = Z, spacing and unit, pixels per micrometre."""
    path = write_stack(tmp_path / "a.tif", make_stack(np.float32), VOXEL)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        meta = tif.imagej_metadata
        assert meta["slices"] == 5
        assert meta["spacing"] == pytest.approx(VOXEL[0])
        assert meta["unit"] == "um"
        x_res, y_res = tif.pages.first.resolution
        assert 1 / x_res == pytest.approx(VOXEL[2], rel=1e-4)
        assert 1 / y_res == pytest.approx(VOXEL[1], rel=1e-4)


def test_ome_tiff_metadata(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "a.ome.tif", make_stack(np.uint16), VOXEL)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "ZYX"
        assert 'PhysicalSizeZ="0.7"' in tif.ome_metadata


def test_ome_zarr_metadata(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "a.zarr", make_stack(np.uint16, (4, 30, 20)), VOXEL)
    group = zarr.open_group(str(path), mode="r")
    multiscale = group.attrs["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"micrometer"}
    dataset = multiscale["datasets"][0]
    assert dataset["path"] == "0"
    assert dataset["coordinateTransformations"][0]["scale"] == pytest.approx(list(VOXEL))
    assert group["0"].chunks == (1, 30, 20)
    assert (path / ".zgroup").exists()


def test_read_plain_zarr_array(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    zarr.save_array(str(tmp_path / "plain.zarr"), data)
    stack = read_stack(tmp_path / "plain.zarr")
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size is None


def test_read_ome_zarr_with_channels_and_nanometres(tmp_path: Path) -> None:
    data = make_stack(np.uint16, (2, 4, 10, 12))
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=2)
    root.create_array("s0", shape=data.shape, dtype=data.dtype)[:] = data
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"
    ]
    scale = [{"type": "scale", "scale": [1, 500, 100, 100]}]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "s0", "coordinateTransformations": scale}],
        }
    ]
    stack = read_stack(tmp_path / "c.zarr", channel=1)
    np.testing.assert_array_equal(stack.data, data[1])
    assert stack.voxel_size == pytest.approx((0.5, 0.1, 0.1))
    assert stack.axes == "CZYX"
    lazy = read_stack(tmp_path / "c.zarr", channel=1, lazy=True)
    np.testing.assert_array_equal(lazy.data[2], data[1, 2])
    assert error_of(tmp_path / "c.zarr").count("--channel") == 1


def test_read_fiji_style_micron_unit(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"},
    )
    assert read_stack(path).voxel_size == pytest.approx((2.0, 0.5, 0.25))


def test_read_plain_tiff_without_metadata(tmp_path: Path) -> None:
    """Multi-page TIFFs from other software have no axes: the pages are the slices."""
    data = make_stack(np.uint16)
    path = tmp_path / "plain.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in data:
            tif.write(plane, metadata=None, photometric="minisblack")
    stack = read_stack(path)
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size is None


# ---------------------------------------------------------------------------------------- lazy


@pytest.mark.parametrize("name", NAMES)
def test_lazy_matches_eager(tmp_path: Path, name: str) -> None:
    path = write_stack(tmp_path / name, make_stack(np.uint16), VOXEL)
    eager = read_stack(path)
    lazy = read_stack(path, lazy=True)
    assert lazy.shape == eager.shape
    assert lazy.dtype == eager.dtype
    assert lazy.voxel_size == pytest.approx(VOXEL, rel=1e-4)
    for z in range(eager.shape[0]):
        np.testing.assert_array_equal(np.asarray(lazy.data[z]), eager.data[z])
    np.testing.assert_array_equal(np.asarray(lazy.data[1:4, 2:9, 3:7]), eager.data[1:4, 2:9, 3:7])


def test_lazy_tiff_is_not_loaded(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "a.tif", make_stack(np.uint16))
    data = read_stack(path, lazy=True).data
    assert isinstance(data, np.memmap)
    assert not data.flags.writeable


def test_lazy_compressed_tiff_reads_pages_on_demand(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "ZYX"})
    lazy = read_stack(path, lazy=True).data
    assert not isinstance(lazy, np.ndarray)
    np.testing.assert_array_equal(np.asarray(lazy[3]), data[3])


def test_lazy_channel_selection(tmp_path: Path) -> None:
    data = make_stack(np.uint16, (5, 3, 16, 12))
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    lazy = read_stack(path, channel=2, lazy=True)
    assert lazy.shape == (5, 16, 12)
    np.testing.assert_array_equal(np.asarray(lazy.data[4]), data[4, 2])


def test_lazy_does_not_check_finite_but_helper_does(tmp_path: Path) -> None:
    data = make_stack(np.float32)
    data[3, 2, 2] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    lazy = read_stack(path, lazy=True)
    check_finite(lazy.data[0], path, z=0)
    with pytest.raises(DqlrError, match="in slice 3") as info:
        check_finite(lazy.data[3], path, z=3)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_stack_writer_streams(tmp_path: Path, name: str, dtype: type) -> None:
    data = make_stack(dtype, (6, 20, 18))
    path = tmp_path / name
    with create_stack_writer(path, data.shape, dtype, VOXEL) as writer:
        for z in range(data.shape[0]):
            assert not path.exists()
            writer[z] = data[z]
    stack = read_stack(path)
    assert stack.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size == pytest.approx(VOXEL, rel=1e-4)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", NAMES)
def test_stack_writer_exception_removes_temp(tmp_path: Path, name: str) -> None:
    data = make_stack(np.uint16)
    with (
        pytest.raises(RuntimeError),
        create_stack_writer(tmp_path / name, data.shape, data.dtype) as w,
    ):
        w[0] = data[0]
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", NAMES)
def test_stack_writer_missing_slices_fails(tmp_path: Path, name: str) -> None:
    data = make_stack(np.uint16)
    with (
        pytest.raises(DqlrError, match="2 of 5"),
        create_stack_writer(tmp_path / name, data.shape, data.dtype) as writer,
    ):
        writer[0] = data[0]
        writer[1] = data[1]
    assert os.listdir(tmp_path) == []


def test_stack_writer_rejects_bad_slices(tmp_path: Path) -> None:
    with create_stack_writer(tmp_path / "a.tif", (3, 8, 8), np.uint16) as writer:
        with pytest.raises(ValueError):
            writer[0] = np.zeros((8, 8), np.float32)  # would silently wrap
        with pytest.raises(ValueError):
            writer[0] = np.zeros((7, 8), np.uint16)
        for z in range(3):
            writer[z] = np.full((8, 8), z, np.uint8)
    np.testing.assert_array_equal(read_stack(tmp_path / "a.tif").data[:, 0, 0], [0, 1, 2])


def test_write_lazy_input_slice_by_slice(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    lazy = read_stack(write_stack(tmp_path / "in.zarr", data), lazy=True).data
    out = write_stack(tmp_path / "out.ome.tif", lazy)
    np.testing.assert_array_equal(read_stack(out).data, data)


# --------------------------------------------------------------------------- channels and time


def test_channel_from_zcyx_imagej(tmp_path: Path) -> None:
    data = make_stack(np.uint16, (4, 3, 16, 12))
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"},
    )
    for c in range(3):
        stack = read_stack(path, channel=c)
        np.testing.assert_array_equal(stack.data, data[:, c])
        assert stack.axes == "ZCYX"
    assert stack.voxel_size == pytest.approx((1.5, 0.2, 0.2))
    message = error_of(path)
    assert "--channel" in message and "3 channels" in message
    assert "--channel" in error_of(path, channel=3)
    assert "--channel" in error_of(path, channel=-1)


def test_channel_from_czyx_ome_tiff(tmp_path: Path) -> None:
    data = make_stack(np.float32, (2, 4, 10, 8))
    path = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CZYX"})
    np.testing.assert_array_equal(read_stack(path, channel=1).data, data[1])
    np.testing.assert_array_equal(read_stack(path, channel=0).data, data[0])
    assert "2 channels" in error_of(path)


def test_channel_zero_on_single_channel_is_fine(tmp_path: Path) -> None:
    data = make_stack(np.uint8)
    path = write_stack(tmp_path / "a.tif", data)
    np.testing.assert_array_equal(read_stack(path, channel=0).data, data)
    assert "one channel" in error_of(path, channel=1)


def test_timepoint_selection(tmp_path: Path) -> None:
    data = make_stack(np.uint16, (3, 4, 2, 10, 8))
    path = tmp_path / "tzcyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    stack = read_stack(path, channel=1, timepoint=2)
    np.testing.assert_array_equal(stack.data, data[2, :, 1])
    assert "--timepoint" in error_of(path, channel=0)
    assert "--timepoint" in error_of(path, channel=0, timepoint=3)
    lazy = read_stack(path, channel=1, timepoint=2, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data[3]), data[2, 3, 1])


def test_rgb_stack(tmp_path: Path) -> None:
    data = make_stack(np.uint8, (4, 12, 10, 3))
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": "ZYXS"})
    message = error_of(path)
    assert "RGB" in message and "--channel" in message
    np.testing.assert_array_equal(read_stack(path, channel=2).data, data[..., 2])


# ------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "nothing.tif")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    assert "empty" in error_of(path)


@pytest.mark.parametrize("name", ["image.png", "image.xyz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x89PNG not really")
    assert ".ome.tif" in error_of(path)


@pytest.mark.parametrize("name", ["junk.tif", "junk.ome.tiff"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    assert "corrupt" in error_of(path)
    assert "corrupt" in error_of(path, lazy=True)


def test_corrupt_zarr(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "a.zarr", make_stack(np.uint16))
    (path / "0" / ".zarray").write_text("{ not json")
    assert "corrupt" in error_of(path)
    folder = tmp_path / "none.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert "Zarr metadata" in error_of(folder)
    (tmp_path / "empty.zarr").mkdir()
    assert "empty" in error_of(tmp_path / "empty.zarr")


@pytest.mark.parametrize("name", ["cut.tif", "cut.ome.tif"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff(tmp_path: Path, name: str, compression: str | None) -> None:
    path = tmp_path / name
    tifffile.imwrite(
        path,
        make_stack(np.uint16, (6, 40, 30)),
        metadata={"axes": "ZYX"},
        compression=compression,
        **({"ome": True} if "ome" in name else {"imagej": compression is None}),
    )
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    assert "truncated" in error_of(path)
    assert "truncated" in error_of(path, lazy=True)


def test_truncated_in_pixel_data_of_last_slice(tmp_path: Path) -> None:
    """Cut inside the pixel data, not the headers: must not read zeros for the missing part."""
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, make_stack(np.uint16, (6, 40, 30)), imagej=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        end = tif.series[0].dataoffset + tif.series[0].nbytes
    path.write_bytes(path.read_bytes()[: end - 100])
    assert "truncated" in error_of(path)
    assert "truncated" in error_of(path, lazy=True)


@pytest.mark.parametrize("name", ["flat.tif", "flat.ome.tif", "flat.zarr"])
def test_2d_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    image = make_stack(np.uint16, (1, 20, 20))[0]
    if name.endswith(".zarr"):
        zarr.save_array(str(path), image)
    else:
        tifffile.imwrite(path, image)
    assert "2-D" in error_of(path)


@pytest.mark.parametrize("name", ["two.tif", "two.ome.tif", "two.zarr"])
def test_two_slices(tmp_path: Path, name: str) -> None:
    path = write_stack(tmp_path / name, make_stack(np.uint16, (2, 10, 10)))
    assert "at least 3" in error_of(path)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path: Path, name: str, bad: float) -> None:
    data = make_stack(np.float32)
    data[2, 5, 5] = bad
    path = write_stack(tmp_path / name, data)
    message = error_of(path)
    assert ("NaN" if np.isnan(bad) else "Inf") in message
    assert "slice 2" in message


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtypes(tmp_path: Path, dtype: type) -> None:
    path = tmp_path / "odd.tif"
    data = np.ones((4, 8, 8), dtype=dtype)
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    assert "data type" in error_of(path)


# ------------------------------------------------------------------------------ safe writing


@pytest.mark.parametrize("name", NAMES)
def test_existing_output_needs_force(tmp_path: Path, name: str) -> None:
    old, new = make_stack(np.uint16, seed=1), make_stack(np.uint16, seed=2)
    path = write_stack(tmp_path / name, old)
    with pytest.raises(DqlrError, match="pass --force") as info:
        write_stack(path, new)
    assert str(path) in str(info.value)
    with pytest.raises(DqlrError, match="pass --force"):
        create_stack_writer(path, new.shape, new.dtype)
    np.testing.assert_array_equal(read_stack(path).data, old)
    assert sorted(os.listdir(tmp_path)) == [name]

    write_stack(path, new, force=True)
    np.testing.assert_array_equal(read_stack(path).data, new)
    assert sorted(os.listdir(tmp_path)) == [name]


def test_force_replaces_zarr_with_smaller_stack(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "a.zarr", make_stack(np.uint16, (8, 10, 10)))
    new = make_stack(np.float32, (3, 6, 5))
    write_stack(path, new, force=True)
    stack = read_stack(path)
    assert stack.dtype == np.float32
    np.testing.assert_array_equal(stack.data, new)
    assert not (path / "0" / "7").exists()


def test_force_failure_keeps_old_output(tmp_path: Path) -> None:
    old = make_stack(np.uint16, seed=1)
    path = write_stack(tmp_path / "a.zarr", old)
    with (
        pytest.raises(RuntimeError),
        create_stack_writer(path, old.shape, old.dtype, force=True) as w,
    ):
        w[0] = old[0] + 1
        raise RuntimeError("crash mid-write")
    np.testing.assert_array_equal(read_stack(path).data, old)
    assert leftovers(tmp_path) == []


def test_force_will_not_replace_a_plain_folder(tmp_path: Path) -> None:
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DqlrError, match="not a Zarr store"):
        write_stack(folder, make_stack(np.uint8), force=True)
    assert (folder / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", NAMES)
def test_protect_refuses_even_with_force(tmp_path: Path, name: str) -> None:
    data = make_stack(np.uint16)
    path = write_stack(tmp_path / name, data)
    for target in (path, tmp_path / "." / name):
        with pytest.raises(DqlrError, match="also an input") as info:
            write_stack(target, data + 1, force=True, protect=[path])
        assert "\n" not in str(info.value)
        with pytest.raises(DqlrError, match="also an input"):
            create_stack_writer(target, data.shape, data.dtype, force=True, protect=[str(path)])
    np.testing.assert_array_equal(read_stack(path).data, data)
    assert sorted(os.listdir(tmp_path)) == [name]


def test_protect_symlink_and_other_paths(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    source = write_stack(tmp_path / "in.tif", data)
    link = tmp_path / "link.tif"
    link.symlink_to(source)
    with pytest.raises(DqlrError, match="also an input"):
        write_stack(link, data, force=True, protect=[source])
    out = write_stack(tmp_path / "out.tif", data, protect=[source])
    assert out.exists()


def test_write_rejects_bad_data(tmp_path: Path) -> None:
    with pytest.raises(DqlrError, match="a 3-D ZYX"):
        write_stack(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(DqlrError, match="voxel size"):
        write_stack(tmp_path / "a.tif", np.zeros((3, 4, 4), np.uint8), voxel_size=(1, 0, 1))
    with pytest.raises(DqlrError, match="write data type"):
        write_stack(tmp_path / "a.tif", np.zeros((3, 4, 4), np.complex64))
    with pytest.raises(DqlrError, match="unsupported file type"):
        write_stack(tmp_path / "a.png", np.zeros((3, 4, 4), np.uint8))
    assert os.listdir(tmp_path) == []


def test_write_creates_parent_folder(tmp_path: Path) -> None:
    data = make_stack(np.uint8)
    path = write_stack(tmp_path / "new" / "deeper" / "a.tif", data)
    np.testing.assert_array_equal(read_stack(path).data, data)


def test_narrow_stack_is_not_mistaken_for_rgb(tmp_path: Path) -> None:
    data = make_stack(np.uint8, (4, 10, 3))
    for name in NAMES:
        np.testing.assert_array_equal(read_stack(write_stack(tmp_path / name, data)).data, data)


def test_big_endian_tiff(tmp_path: Path) -> None:
    data = make_stack(np.uint16)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">", metadata={"axes": "ZYX"})
    for lazy in (False, True):
        stack = read_stack(path, lazy=lazy)
        assert stack.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(stack.data[2]), data[2])
    out = write_stack(tmp_path / "out.tif", read_stack(path, lazy=True).data)
    np.testing.assert_array_equal(read_stack(out).data, data)


def test_stack_properties() -> None:
    stack = Stack(np.zeros((3, 4, 5), np.uint16), None)
    assert stack.shape == (3, 4, 5)
    assert stack.dtype == np.uint16
    assert stack.axes == "ZYX"


@pytest.mark.parametrize("name", NAMES)
def test_info_added_while_writing_is_stored(tmp_path, name) -> None:
    """What is known only after the slices (the guard's notes) still lands in the file's metadata,
    and the data, dtype and voxel size come through the extra pass unchanged."""
    data = make_stack(np.float32, seed=4)
    with create_stack_writer(tmp_path / name, data.shape, data.dtype, VOXEL, info="first line") as writer:
        for z in range(data.shape[0]):
            writer[z] = data[z]
        writer.add_info("note: added at the end")
    stack = read_stack(tmp_path / name)
    assert stack.info == "first line\nnote: added at the end"
    assert stack.data.dtype == np.float32 and np.array_equal(stack.data, data)
    assert stack.voxel_size == pytest.approx(VOXEL)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_a_crop_of_every_slice_of_a_view_reads_and_keeps_only_the_crop() -> None:
    """A crop through all slices (the depth estimate's) must not hold whole slices: on a
    64 x 4096 x 4096 volume that was the whole volume in memory. Flipped and resized views too."""
    data = np.random.default_rng(0).random((5, 60, 80)).astype(np.float32)
    recorded = RecordedReads(data)
    crop = StackView(recorded, flip=True)[:, 10:30, 20:60]
    assert np.array_equal(crop, data[::-1, 10:30, 20:60])
    assert recorded.reads == [(20, 40)] * 5
    resized = StackView(data, zoom=0.5)[1:3, 5:10, 5:10]
    assert resized.shape == (2, 5, 5)
    assert np.array_equal(StackView(data, start=1, stop=4)[2], data[3])
