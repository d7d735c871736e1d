"""Quality measures: reference metrics must agree with scikit-image, no-reference ones must move the
right way with blur, halo and noise, and the evaluation must produce the tables and files promised."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dqlr.errors import DqlrError
from dqlr.evaluation.metrics import (
    evaluate,
    evaluate_files,
    format_table,
    membrane_contrast,
    no_reference,
    noise_level,
    per_slice,
    psnr_affine,
    sharpness,
    ssim_affine,
    thirds,
    to_json,
    write_csv,
)
from dqlr.io import write_stack
from dqlr.simulation import SimulatedPlant, simulate_plant

SHAPE = (12, 64, 64)
SLICE = 8  # a slice the tissue fills


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def sharp(plant: SimulatedPlant) -> np.ndarray:
    return plant.clean[SLICE].astype(np.float64)


def _pair_without_fit(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """result x and reference x + e with e orthogonal to x and to 1, so the best fit is a=1, b=0."""
    rng = np.random.default_rng(seed)
    x = rng.random((32, 32))
    e = rng.normal(0.0, 0.05, x.shape)
    basis = np.stack([x.ravel(), np.ones(x.size)], 1)
    coef, *_ = np.linalg.lstsq(basis, e.ravel(), rcond=None)
    e = e - (basis @ coef).reshape(x.shape)
    return x, x + e


def test_psnr_matches_skimage_when_no_fit_is_needed() -> None:
    x, ref = _pair_without_fit()
    expected = peak_signal_noise_ratio(ref, x, data_range=ref.max() - ref.min())
    assert psnr_affine(x, ref) == pytest.approx(expected, abs=1e-9)
    assert psnr_affine(x, ref, fit=False) == pytest.approx(expected, abs=1e-12)


def test_psnr_is_invariant_to_an_affine_change_of_the_result() -> None:
    x, ref = _pair_without_fit(1)
    assert psnr_affine(3.0 * x + 7.0, ref) == pytest.approx(psnr_affine(x, ref), abs=1e-9)
    assert psnr_affine(3.0 * x + 7.0, ref, fit=False) < psnr_affine(x, ref) - 10


def test_ssim_matches_skimage_and_is_affine_invariant() -> None:
    x, ref = _pair_without_fit(2)
    expected = structural_similarity(
        ref, x, gaussian_weights=True, sigma=1.5, data_range=ref.max() - ref.min()
    )
    assert ssim_affine(x, ref) == pytest.approx(expected, abs=1e-9)
    assert ssim_affine(x, ref, fit=False) == pytest.approx(expected, abs=1e-12)
    assert ssim_affine(0.5 * x - 2.0, ref) == pytest.approx(expected, abs=1e-9)


def test_psnr_of_observed_falls_with_depth(plant: SimulatedPlant) -> None:
    means = thirds(per_slice(plant.observed, plant.clean)["psnr"])
    assert means["top"] > means["middle"] > means["deep"]


def test_sharpness_falls_with_blur(sharp: np.ndarray) -> None:
    values = [sharpness(ndimage.gaussian_filter(sharp, s)) if s else sharpness(sharp) for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_contrast_falls_with_blur_and_halo(sharp: np.ndarray) -> None:
    base = membrane_contrast(sharp)
    assert 0 < base < 1
    assert membrane_contrast(ndimage.gaussian_filter(sharp, 2)) < base
    halo = 0.7 * sharp + 0.3 * ndimage.gaussian_filter(sharp, 16)
    assert membrane_contrast(halo) < base


def test_noise_level_rises_with_noise(sharp: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    values = [noise_level(sharp + rng.normal(0.0, s, sharp.shape)) for s in (0, 10, 30, 100)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


def test_no_reference_measures_ignore_gain_and_offset(sharp: np.ndarray) -> None:
    dimmed = 0.3 * sharp + 50.0
    for measure in (sharpness, membrane_contrast, noise_level):
        assert measure(dimmed) == pytest.approx(measure(sharp), rel=1e-6)


def test_no_reference_tracks_degradation_with_depth(plant: SimulatedPlant) -> None:
    observed, clean = no_reference(plant.observed), no_reference(plant.clean)
    assert all(v.shape == (SHAPE[0],) for v in observed.values())
    sharp_ratio = thirds(observed["sharpness"] / clean["sharpness"])
    contrast_ratio = thirds(observed["contrast"] / clean["contrast"])
    noise = thirds(observed["noise"])
    assert sharp_ratio["deep"] < sharp_ratio["top"]
    assert contrast_ratio["deep"] < contrast_ratio["top"]
    assert noise["deep"] > noise["top"]


def test_evaluate_keys_table_and_json(plant: SimulatedPlant) -> None:
    result = ndimage.gaussian_filter(plant.observed.astype(np.float32), (0, 1, 1))
    ev = evaluate(result, plant.clean, input=plant.observed)
    assert ev["metrics"] == ["psnr", "ssim", "sharpness", "contrast", "noise"]
    for part in ("result", "input"):
        assert set(ev[part]["per_slice"]) == set(ev["metrics"])
        assert all(len(v) == SHAPE[0] for v in ev[part]["per_slice"].values())
        assert set(ev[part]["thirds"]["psnr"]) == {"top", "middle", "deep"}
    gain = ev["gain"]["psnr"]["deep"]
    assert gain == pytest.approx(
        ev["result"]["thirds"]["psnr"]["deep"] - ev["input"]["thirds"]["psnr"]["deep"]
    )
    assert gain > 0  # smoothing removes noise in the dim deep slices
    loaded = json.loads(to_json(ev))
    assert loaded["result"]["per_slice"]["psnr"] == pytest.approx(list(ev["result"]["per_slice"]["psnr"]))
    lines = format_table(ev).splitlines()
    assert "PSNR dB" in lines[0] and "SSIM" in lines[0]
    assert [line.split()[0] for line in lines[1:10:3]] == ["top", "middle", "deep"]
    labels = [line.split()[1 if i % 3 == 0 else 0] for i, line in enumerate(lines[1:10])]
    assert labels == ["input", "result", "gain"] * 3


def test_evaluate_without_reference_or_input(plant: SimulatedPlant) -> None:
    ev = evaluate(plant.observed)
    assert ev["metrics"] == ["sharpness", "contrast", "noise"]
    assert "input" not in ev and "gain" not in ev
    table = format_table(ev)
    assert "PSNR" not in table and "gain" not in table
    assert [line.split()[0] for line in table.splitlines()[1:4]] == ["top", "middle", "deep"]


def test_json_is_strict_lists_of_floats() -> None:
    text = to_json({"psnr": np.array([1.5, np.inf, np.nan]), "n": np.int64(3), "ok": np.bool_(True)})
    assert json.loads(text) == {"psnr": [1.5, None, None], "n": 3, "ok": True}


def test_write_csv_one_row_per_slice(plant: SimulatedPlant, tmp_path) -> None:
    ev = evaluate(plant.observed, plant.clean, input=plant.observed)
    path = write_csv(ev, tmp_path / "per_slice.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == SHAPE[0]
    assert list(rows[0]) == ["z", "psnr", "ssim", "sharpness", "contrast", "noise"] + [
        f"input_{m}" for m in ("psnr", "ssim", "sharpness", "contrast", "noise")
    ]
    assert [int(r["z"]) for r in rows] == list(range(SHAPE[0]))
    assert float(rows[5]["psnr"]) == pytest.approx(ev["result"]["per_slice"]["psnr"][5])


def test_evaluate_files_writes_json_and_csv(plant: SimulatedPlant, tmp_path) -> None:
    paths = {}
    for name in ("result", "clean", "observed"):
        paths[name] = tmp_path / f"{name}.tif"
    write_stack(paths["result"], plant.observed)
    write_stack(paths["clean"], plant.clean)
    write_stack(paths["observed"], plant.observed)
    ev = evaluate_files(
        paths["result"],
        reference_path=paths["clean"],
        input_path=paths["observed"],
        json_path=tmp_path / "out" / "eval.json",
        csv_path=tmp_path / "out" / "eval.csv",
    )
    assert ev["gain"]["psnr"]["deep"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["n_slices"] == SHAPE[0]
    assert len((tmp_path / "out" / "eval.csv").read_text().splitlines()) == SHAPE[0] + 1


def test_shape_mismatch_is_a_one_line_error(plant: SimulatedPlant, tmp_path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_stack(a, plant.observed)
    write_stack(b, plant.observed[:, :32])
    with pytest.raises(DqlrError) as info:
        evaluate_files(a, reference_path=b)
    message = str(info.value)
    assert str(a) in message and str(b) in message and "\n" not in message
    with pytest.raises(DqlrError):
        evaluate_files(a, input_path=b)
    with pytest.raises(DqlrError):
        evaluate(plant.observed, plant.clean[:-1])


def test_non_finite_values_are_a_one_line_error(plant: SimulatedPlant, tmp_path) -> None:
    bad = plant.observed.astype(np.float32)
    bad[7, 3, 3] = np.nan
    path = tmp_path / "bad.tif"
    write_stack(path, bad)
    with pytest.raises(DqlrError, match="slice 7"):
        evaluate_files(path)
