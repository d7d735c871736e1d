"""OME-Zarr pyramids: block means, level factors, chunk-by-chunk levels read back by ome-zarr."""

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from dqlr.errors import DqlrError
from dqlr.io import Channel, Layout, create_stack_writer, read_layout, read_stack
from dqlr.io.pyramid import block_mean, level_factors, level_shapes, write_pyramid


def _ome_image(path) -> tuple[list[np.ndarray], dict]:
    """Levels and metadata of an OME-Zarr image as ome-zarr's reader sees them."""
    node = next(iter(Reader(parse_url(str(path), fmt=FormatV04()))()))
    return [np.asarray(level) for level in node.data], node.metadata


def test_block_mean_averages_whole_and_cut_blocks() -> None:
    a = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    out = block_mean(a, (2, 2), np.float32)
    assert out.shape == (3, 2)
    assert out[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert out[2, 1] == pytest.approx(np.mean([18, 19]))  # the last row is a cut block
    ints = block_mean(np.array([[0, 255], [255, 255]], np.uint8), (2, 2), np.uint8)
    assert ints.dtype == np.uint8 and ints[0, 0] == 191  # 191.25 rounded


def test_level_factors_need_whole_multiples() -> None:
    assert level_factors([(1, 1, 1), (1, 2, 2), (2, 4, 4)]) == [(1, 2, 2), (2, 2, 2)]
    assert level_shapes((2, 5, 33, 32), "CZYX", [(1, 1, 1), (1, 2, 2), (2, 4, 4)]) == [
        (2, 5, 33, 32),
        (2, 5, 17, 16),
        (2, 3, 9, 8),
    ]
    with pytest.raises(DqlrError, match="not whole multiples"):
        level_factors([(1, 1, 1), (1, 1.5, 1.5)])


def test_zarr_pyramid_is_ngff_and_built_chunk_by_chunk(tmp_path) -> None:
    """A float CZYX stack at 0.7 x 0.3 x 0.3 µm with three levels: ome-zarr reads every level,
    its scales and the channels; each level is the block mean of the one above, also when built
    from 8-pixel chunks."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (2, 6, 32, 40)).astype(np.float32)[:, ::-1]  # flipped in z
    scales = [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 4.0)]
    channels = [Channel("membrane", (80.0, 150.0), Channel.lut_of("00FF00")), Channel("nuclei")]
    layout = Layout("CZYX", data.shape, channels=channels, scales=scales)
    path = tmp_path / "out.zarr"
    with create_stack_writer(path, data.shape[1:], data.dtype, (0.7, 0.3, 0.3), layout=layout) as writer:
        for c in range(2):
            for z in range(6):
                writer[0, c, z] = data[c, z]
    levels, meta = _ome_image(path)
    assert [level.shape for level in levels] == [(2, 6, 32, 40), (2, 6, 16, 20), (2, 3, 8, 10)]
    np.testing.assert_array_equal(levels[0], data)
    np.testing.assert_allclose(levels[1], block_mean(data, (1, 1, 2, 2), np.float32), rtol=1e-6)
    np.testing.assert_allclose(levels[2], block_mean(levels[1], (1, 2, 2, 2), np.float32), rtol=1e-6)
    assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
    assert meta["axes"][1]["unit"] == "micrometer"
    transforms = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    np.testing.assert_allclose(transforms, [[1, 0.7, 0.3, 0.3], [1, 0.7, 0.6, 0.6], [1, 1.4, 1.2, 1.2]])
    assert meta["channel_names"] == ["membrane", "nuclei"]
    back = read_layout(path)
    assert back.scales == scales and back.channels[0].display_range == (80.0, 150.0)
    assert back.channels[0].color == "00FF00" and back.channels[1].display_range is None
    assert read_stack(path, channel=1).voxel_size == pytest.approx((0.7, 0.3, 0.3))

    # The same levels from small chunks: nothing depends on holding a whole level.
    group = zarr.open_group(str(path), mode="r+")
    for level in ("1", "2"):
        del group[level]
    write_pyramid(path, "CZYX", scales, tile=8)
    chunked, _ = _ome_image(path)
    for a, b in zip(chunked, levels, strict=True):
        np.testing.assert_array_equal(a, b)


def test_levels_that_are_not_whole_multiples_are_refused_before_writing(tmp_path) -> None:
    layout = Layout("ZYX", (4, 16, 16), scales=[(1.0, 1.0, 1.0), (1.0, 1.5, 1.5)])
    with pytest.raises(DqlrError, match="not whole multiples"):
        create_stack_writer(tmp_path / "out.zarr", (4, 16, 16), np.uint16, layout=layout)
    assert not list(tmp_path.iterdir())
    # TIFF has no levels: the same layout is fine there.
    with create_stack_writer(tmp_path / "out.tif", (4, 16, 16), np.uint16, layout=layout) as writer:
        for z in range(4):
            writer[z] = np.full((16, 16), z, np.uint16)
    assert read_stack(tmp_path / "out.tif").data[:, 0, 0].tolist() == [0, 1, 2, 3]
