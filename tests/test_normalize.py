"""Per-stack percentile normalisation: inverse, clipping, constant stacks, subsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dqlr.errors import DqlrError
from dqlr.io import Stack, read_stack, write_stack
from dqlr.normalize import Normalization, denormalize, fit_normalization, normalize


def random_stack(dtype: type, shape: tuple[int, int, int] = (6, 32, 32), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(500.0, 120.0, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_integer_round_trip(dtype: type) -> None:
    data = random_stack(dtype)
    norm = fit_normalization(data)
    y = normalize(data, norm)
    assert y.dtype == np.float32
    back = denormalize(y, norm, dtype)
    assert back.dtype == np.dtype(dtype)
    error = np.abs(back.astype(np.int64) - data.astype(np.int64)).max()
    assert error <= 0.5  # i.e. exact after rounding
    raw = y.astype(np.float64) * (norm.high - norm.low) + norm.low
    assert np.abs(raw - data).max() <= 0.5


def test_float_round_trip() -> None:
    data = random_stack(np.float32)
    norm = fit_normalization(data)
    back = denormalize(normalize(data, norm), norm, np.float32)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-5, atol=1e-3)


def test_normalize_maps_percentiles_to_zero_and_one_without_clipping() -> None:
    data = random_stack(np.uint16)
    norm = fit_normalization(data, 1.0, 99.0)
    assert norm.low == pytest.approx(np.percentile(data, 1.0))
    assert norm.high == pytest.approx(np.percentile(data, 99.0))
    y = normalize(data, norm)
    assert y.min() < 0 and y.max() > 1  # the tails are kept, not clipped
    assert np.mean(y < 0) == pytest.approx(0.01, abs=0.003)
    assert np.mean(y > 1) == pytest.approx(0.01, abs=0.003)
    assert normalize(np.array([norm.low, norm.high]), norm) == pytest.approx([0.0, 1.0])


def test_denormalize_clips_to_the_dtype_range() -> None:
    norm = Normalization(low=100.0, high=1100.0)
    y = np.array([-5.0, -0.1, 0.0, 0.5004, 1.0, 70.0, 200.0], dtype=np.float32)
    assert denormalize(y, norm, np.uint16).tolist() == [0, 0, 100, 600, 1100, 65535, 65535]
    assert denormalize(y, norm, np.uint8).tolist() == [0, 0, 100, 255, 255, 255, 255]
    assert denormalize(y, norm, np.int16).tolist() == [-4900, 0, 100, 600, 1100, 32767, 32767]
    # 16-bit data is not squeezed into 8 bits.
    assert denormalize(np.float32([40.0]), norm, np.uint16)[0] == 40100
    floats = denormalize(y, norm, np.float32)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, [-4900, 0, 100, 600.4, 1100, 70100, 200100], rtol=1e-6)


def test_denormalize_handles_nan_for_integers() -> None:
    norm = Normalization(low=0.0, high=10.0)
    out = denormalize(np.float32([np.nan, np.inf, -np.inf]), norm, np.uint16)
    assert out.tolist() == [0, 65535, 0]


def test_constant_stack_has_no_nan() -> None:
    data = np.full((4, 8, 8), 7, np.uint16)
    norm = fit_normalization(data)
    assert norm.low == 7.0
    assert norm.high == 8.0
    y = normalize(data, norm)
    assert np.isfinite(y).all()
    assert (y == 0).all()
    np.testing.assert_array_equal(denormalize(y, norm, np.uint16), data)


def test_percentiles_are_per_stack_not_per_slice() -> None:
    """A dim deep slice must stay dim: normalising it on its own would stretch its noise."""
    rng = np.random.default_rng(3)
    data = np.empty((8, 32, 32), np.float32)
    for z in range(8):
        brightness = 1000.0 * 0.5**z
        data[z] = brightness * (1 + 0.1 * rng.standard_normal((32, 32)))
    norm = fit_normalization(data)
    y = normalize(data, norm)
    means = y.mean(axis=(1, 2))
    assert means[-1] < 0.02
    assert means[0] > 0.8
    assert np.all(np.diff(means) < 0)


def test_dict_round_trip() -> None:
    norm = Normalization(low=12.5, high=3456.0, p_low=1.0, p_high=99.5)
    d = norm.to_dict()
    assert d == {"low": 12.5, "high": 3456.0, "p_low": 1.0, "p_high": 99.5}
    assert all(type(v) is float for v in d.values())
    assert Normalization.from_dict(d) == norm
    fitted = fit_normalization(random_stack(np.uint16))
    assert Normalization.from_dict(fitted.to_dict()) == fitted
    assert all(type(v) is float for v in fitted.to_dict().values())


def test_from_dict_rejects_bad_records() -> None:
    with pytest.raises(DqlrError):
        Normalization.from_dict({"low": 1.0})
    with pytest.raises(DqlrError):
        Normalization.from_dict({"low": "a", "high": 2})
    with pytest.raises(DqlrError):
        Normalization.from_dict({"low": 5.0, "high": 5.0})
    with pytest.raises(DqlrError):
        fit_normalization(random_stack(np.uint8), 60.0, 40.0)


def test_subsampled_estimate_is_close_to_exact() -> None:
    rng = np.random.default_rng(5)
    data = rng.gamma(2.0, 300.0, (40, 160, 160)).astype(np.float32)  # ~1M voxels
    exact = np.percentile(data, [0.5, 99.8])
    norm = fit_normalization(data, max_samples=100_000, seed=1)
    assert norm.low == pytest.approx(exact[0], rel=0.05)
    assert norm.high == pytest.approx(exact[1], rel=0.03)
    again = fit_normalization(data, max_samples=100_000, seed=1)
    assert again == norm  # the seed makes it reproducible
    small = fit_normalization(data[:3, :20, :20], max_samples=100_000)
    assert small.low == pytest.approx(np.percentile(data[:3, :20, :20], 0.5))


class CountingArray:
    """Lazy stand-in that records which slices were read and refuses whole-stack reads."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.read = data, data.shape, data.dtype, []

    def __getitem__(self, index: object) -> np.ndarray:
        assert isinstance(index, int), "must read one slice at a time"
        self.read.append(index)
        return self.data[index]


def test_lazy_stack_is_read_slice_by_slice() -> None:
    data = np.random.default_rng(2).integers(0, 4000, (300, 16, 16)).astype(np.uint16)
    lazy = CountingArray(data)
    norm = fit_normalization(lazy, max_samples=20_000)
    assert 0 < len(lazy.read) <= 256
    assert min(lazy.read) == 0 and max(lazy.read) == 299
    assert norm.low == pytest.approx(np.percentile(data, 0.5), abs=40)
    assert norm.high == pytest.approx(np.percentile(data, 99.8), abs=40)


def test_fit_accepts_stack_and_lazy_files(tmp_path: Path) -> None:
    data = random_stack(np.uint16, (5, 20, 20))
    exact = fit_normalization(data)
    assert fit_normalization(Stack(data, None)) == exact
    for name in ("a.tif", "a.zarr"):
        lazy = read_stack(write_stack(tmp_path / name, data), lazy=True)
        assert fit_normalization(lazy) == exact
        approx = fit_normalization(lazy.data, max_samples=1000)
        assert approx.low == pytest.approx(exact.low, abs=2000)
        assert approx.high == pytest.approx(exact.high, abs=2000)


def test_non_finite_values_are_ignored_or_rejected() -> None:
    data = random_stack(np.float32)
    clean = fit_normalization(data)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    dirty = fit_normalization(data)
    assert dirty.low == pytest.approx(clean.low, rel=1e-3)
    assert dirty.high == pytest.approx(clean.high, rel=1e-3)
    with pytest.raises(DqlrError):
        fit_normalization(np.full((3, 4, 4), np.nan, np.float32))
