"""The simulator must look like a degraded SAM stack and report its true degradation by depth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage, stats

from dqlr.errors import DqlrError
from dqlr.simulation import Optics, SimulatedPlant, simulate_dataset, simulate_plant

SHAPE = (16, 96, 96)
OFFSET = Optics().offset_adu
GAIN = Optics().gain


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def ideal() -> SimulatedPlant:
    return simulate_plant(shape=SHAPE, seed=0, noise=0.0, degradation=0.0)


def tissue_slices(labels: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Slices with enough tissue for per-slice statistics (the apex slices are mostly empty)."""
    return np.flatnonzero((labels > 0).mean(axis=(1, 2)) >= min_fraction)


def sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    """Gradient energy of the mean-normalised slice, lightly smoothed so noise does not count."""
    smooth = ndimage.gaussian_filter(image / image[mask].mean(), 1.0)
    gy, gx = np.gradient(smooth)
    return float(np.mean((gy**2 + gx**2)[mask]))


def contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Membrane contrast: (95th - 50th percentile) / mean within the tissue."""
    v = image[mask]
    return float((np.percentile(v, 95) - np.percentile(v, 50)) / v.mean())


def psnr(observed: np.ndarray, clean: np.ndarray) -> float:
    """PSNR of the clean slice after a least-squares affine fit of observed onto it."""
    a = np.stack([observed.ravel(), np.ones(observed.size)], axis=1)
    coef, *_ = np.linalg.lstsq(a, clean.ravel(), rcond=None)
    mse = np.mean((a @ coef - clean.ravel()) ** 2)
    return float(10 * np.log10(np.ptp(clean) ** 2 / mse))


def test_same_seed_same_stack_other_seed_differs() -> None:
    a = simulate_plant(shape=(6, 48, 48), seed=3)
    b = simulate_plant(shape=(6, 48, 48), seed=3)
    c = simulate_plant(shape=(6, 48, 48), seed=4)
    for name in ("observed", "clean", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.observed, c.observed)
    assert not np.array_equal(a.labels, c.labels)


def test_shapes_dtypes_and_voxel_size(plant: SimulatedPlant) -> None:
    assert plant.observed.shape == plant.clean.shape == plant.labels.shape == SHAPE
    assert plant.observed.dtype == plant.clean.dtype == np.uint16
    assert plant.labels.dtype in (np.uint16, np.uint32)
    assert plant.voxel_size == (1.0, 0.25, 0.25)
    floats = simulate_plant(shape=(4, 32, 32), voxel_size=(0.5, 0.3, 0.3), dtype="float32")
    assert floats.observed.dtype == floats.clean.dtype == np.float32
    assert floats.voxel_size == (0.5, 0.3, 0.3)


def test_eight_bit_output_does_not_clip() -> None:
    small = simulate_plant(shape=(6, 48, 48), dtype="uint8")
    assert small.observed.dtype == np.uint8
    assert (small.observed == 255).mean() < 0.001
    assert small.observed.max() > 60  # but still uses the range


def test_labels_cover_the_tissue_only(plant: SimulatedPlant) -> None:
    inside = plant.labels > 0
    assert not inside[0].any()  # the apex lies 1-3 µm below the top slice
    assert inside[-1, SHAPE[1] // 2, SHAPE[2] // 2]
    # a dome: going down a column, once in the tissue you stay in it
    assert np.all(np.diff(inside.astype(np.int8), axis=0) >= 0)
    # outside the tissue there is only the dim background (offset + gain * ~2 photons)
    clean = plant.clean.astype(float)
    assert OFFSET < np.median(clean[~inside]) < OFFSET + GAIN * 5
    assert np.median(clean[inside]) > OFFSET + GAIN * 10


def test_cell_count_and_size() -> None:
    big = simulate_plant(shape=(24, 128, 128), seed=1)
    ids, counts = np.unique(big.labels[big.labels > 0], return_counts=True)
    assert 40 < len(ids) < 1000
    diameters = (6 * counts * np.prod(big.voxel_size) / np.pi) ** (1 / 3)
    assert 4.0 < np.median(diameters) < 10.0


def test_quality_falls_with_depth(plant: SimulatedPlant) -> None:
    obs = plant.observed.astype(float) - OFFSET
    clean = plant.clean.astype(float) - OFFSET
    zs = tissue_slices(plant.labels)
    values = np.array(
        [
            (
                sharpness(obs[z], plant.labels[z] > 0),
                contrast(obs[z], plant.labels[z] > 0),
                psnr(obs[z], clean[z]),
            )
            for z in zs
        ]
    )
    top = zs < SHAPE[0] / 3
    deep = zs >= SHAPE[0] - SHAPE[0] // 3
    assert top.sum() >= 2 and deep.sum() >= 2
    sharp, cont, peak = values.T
    assert sharp[top].mean() > 2.0 * sharp[deep].mean()
    assert cont[top].mean() > 1.5 * cont[deep].mean()
    assert peak[top].mean() > peak[deep].mean() + 5.0  # dB
    for name, v in (("sharpness", sharp), ("contrast", cont), ("psnr", peak)):
        assert stats.spearmanr(zs, v)[0] < -0.5, name


def test_no_degradation_no_noise_gives_clean(ideal: SimulatedPlant) -> None:
    np.testing.assert_array_equal(ideal.observed, ideal.clean)
    assert np.all(ideal.truth["attenuation"] == 1.0)
    assert np.all(ideal.truth["halo_fraction"] == 0.0)
    assert np.allclose(ideal.truth["psf_xy_um"], Optics().psf_xy_top_um)


def test_walls_are_thin_lines_not_plateaus(ideal: SimulatedPlant) -> None:
    signal = ideal.clean.astype(float) - OFFSET
    zs = tissue_slices(ideal.labels, 0.3)
    assert len(zs) >= 5
    for z in zs:
        v = signal[z][ideal.labels[z] > 0]
        assert (v > 0.5 * v.max()).mean() < 0.25, z
        assert v.max() > 3 * np.median(v), z  # membranes stand out from the cytoplasm


def test_noise_follows_the_camera_model() -> None:
    """Without degradation, observed - clean is shot + read noise with the reported gain."""
    z, y, x = 8, 96, 96
    plant = simulate_plant(shape=(z, y, x), seed=2, degradation=0.0)
    clean = plant.clean.astype(float)
    resid = plant.observed.astype(float) - clean
    assert abs(resid.mean()) < 1.0
    # photon transfer: var = gain * (mean - offset) + read_noise**2
    bins = np.quantile(clean, np.linspace(0, 1, 9))
    idx = np.clip(np.digitize(clean, bins[1:-1]), 0, 7)
    means = np.array([clean[idx == i].mean() for i in range(8)]) - plant.truth["offset_adu"]
    varis = np.array([resid[idx == i].var() for i in range(8)])
    slope, intercept = np.polyfit(means, varis, 1)
    assert slope == pytest.approx(float(plant.truth["gain"]), rel=0.15)
    assert np.sqrt(max(intercept, 0.0)) == pytest.approx(float(plant.truth["read_noise_adu"]), abs=4)
    louder = simulate_plant(shape=(z, y, x), seed=2, degradation=0.0, noise=2.0)
    ratio = (louder.observed.astype(float) - louder.clean).var() / resid.var()
    assert 3.0 < ratio < 5.0
    assert float(louder.truth["gain"]) == pytest.approx(4 * GAIN)


def test_truth_by_depth(plant: SimulatedPlant) -> None:
    t = plant.truth
    optics = Optics()
    for key in ("depth_um", "psf_xy_um", "psf_z_um", "halo_fraction", "attenuation"):
        assert t[key].shape == (SHAPE[0],), key
    np.testing.assert_allclose(t["depth_um"], np.arange(SHAPE[0]) * 1.0)
    assert np.all(np.diff(t["psf_xy_um"]) > 0) and np.all(np.diff(t["psf_z_um"]) > 0)
    assert np.all(np.diff(t["halo_fraction"]) > 0) and np.all(np.diff(t["attenuation"]) < 0)
    assert t["psf_xy_um"][0] == pytest.approx(optics.psf_xy_top_um)
    assert t["psf_xy_um"][-1] == pytest.approx(optics.psf_xy_deep_um)
    assert t["psf_z_um"][-1] == pytest.approx(optics.psf_z_deep_um)
    assert t["halo_fraction"][-1] == pytest.approx(optics.halo_fraction_deep)
    assert t["attenuation"][-1] == pytest.approx(np.exp(-15.0 / optics.attenuation_length_um))
    assert float(t["gain"]) == optics.gain and float(t["read_noise_adu"]) == optics.read_noise_adu
    assert float(t["offset_adu"]) == optics.offset_adu
    stronger = simulate_plant(shape=(6, 32, 32), degradation=2.0)
    weaker = simulate_plant(shape=(6, 32, 32), degradation=1.0)
    assert stronger.truth["psf_xy_um"][-1] > weaker.truth["psf_xy_um"][-1]
    assert stronger.truth["attenuation"][-1] < weaker.truth["attenuation"][-1]


def test_simulate_dataset_writes_plants_and_split(tmp_path, capsys) -> None:
    shape = (4, 32, 32)
    result = simulate_dataset(tmp_path, plants=3, shape=shape, seed=5, progress=False)
    assert capsys.readouterr().err == ""
    split = json.loads((tmp_path / "split.json").read_text())
    assert split == {"train": ["plant00"], "val": ["plant01"], "test": ["plant02"]}
    assert result["split"] == split and result["test"] == ["plant02"]
    for i in range(3):
        for kind in ("observed", "clean", "labels"):
            path = tmp_path / f"plant{i:02d}_{kind}.tif"
            assert result["files"][f"plant{i:02d}"][kind] == str(path)
            assert tifffile.imread(path).shape == shape
        truth = json.loads((tmp_path / f"plant{i:02d}_truth.json").read_text())
        assert len(truth["psf_xy_um"]) == shape[0] and truth["seed"] == 5 + i
    # plant i is simulate_plant(seed=seed + i)
    again = simulate_plant(shape=shape, seed=6)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "plant01_observed.tif"), again.observed)
    with pytest.raises(DqlrError, match="exists"):
        simulate_dataset(tmp_path, plants=3, shape=shape, seed=5, progress=False)
    simulate_dataset(tmp_path, plants=3, shape=shape, seed=9, progress=False, force=True)
    assert json.loads((tmp_path / "plant00_truth.json").read_text())["seed"] == 9


@pytest.mark.parametrize(
    ("plants", "expected"),
    [
        (1, {"train": ["plant00"], "val": [], "test": []}),
        (2, {"train": ["plant00"], "val": [], "test": ["plant01"]}),
        (6, {"train": [f"plant0{i}" for i in range(4)], "val": ["plant04"], "test": ["plant05"]}),
    ],
)
def test_split_by_plant_count(tmp_path, plants: int, expected: dict) -> None:
    result = simulate_dataset(tmp_path, plants=plants, shape=(3, 16, 16), progress=False)
    assert result["split"] == expected
    assert json.loads((tmp_path / "split.json").read_text()) == expected


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"shape": (2, 32, 32)}, "shape"),
        ({"shape": (8, 32)}, "shape"),
        ({"voxel_size": (1.0, 0.0, 0.25)}, "voxel_size"),
        ({"voxel_size": (1.0, -0.25, 0.25)}, "voxel_size"),
        ({"noise": -0.5}, "noise"),
        ({"degradation": -1.0}, "degradation"),
        ({"wall_thickness_um": 0.0}, "wall_thickness_um"),
        ({"optics": Optics(gain=-1.0)}, "optics.gain"),
        ({"dtype": "complex64"}, "dtype"),
    ],
)
def test_bad_parameters_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(DqlrError, match=name) as info:
        simulate_plant(**{"shape": (4, 32, 32), **kwargs})
    assert "\n" not in str(info.value)


def test_bad_dataset_parameters(tmp_path) -> None:
    with pytest.raises(DqlrError, match="plants"):
        simulate_dataset(tmp_path, plants=0, progress=False)
    with pytest.raises(DqlrError, match="shape"):
        simulate_dataset(tmp_path, plants=1, shape=(1, 16, 16), progress=False)
    assert not any(tmp_path.iterdir())
