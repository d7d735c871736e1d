"""Segmentation as a score: exact on known cases, cells found on a hand-made wall grid, better on
clean than on degraded slices, deep slices of tissue from edge to edge keep their cells (also
flipped, as floats, and at another pixel size), a volume segmentation finds more deep cells than
one per slice, and both are reachable from `dqlr evaluate --labels` (and `--volume`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dqlr.cli import main
from dqlr.errors import DqlrError
from dqlr.evaluation.metrics import evaluate
from dqlr.evaluation.segmentation import matched_cells, segment_slice, segment_stack, slice_scores
from dqlr.io import write_stack
from dqlr.simulation import simulate_plant
from dqlr.tissue import tissue_mask


def _grid(cells: int = 6, size: int = 16, wall: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A regular wall grid drawn by hand (not by the simulator): image and true labels."""
    side = cells * size
    labels = (np.arange(side)[:, None] // size) * cells + np.arange(side)[None, :] // size + 1
    image = np.full((side, side), 20.0)
    for k in range(cells + 1):
        image[max(k * size - wall // 2, 0) : k * size + wall // 2, :] = 200.0
        image[:, max(k * size - wall // 2, 0) : k * size + wall // 2] = 200.0
    return image, labels


def test_scores_of_known_cases() -> None:
    _, truth = _grid()
    assert slice_scores(truth, truth) == {"matched": 1.0, "rand_error": 0.0, "split": 0.0, "merged": 0.0}
    split = truth.copy()
    split[:5, :16] = 98  # the first cell cut in three parts, none of them half of it
    split[5:10, :16] = 99
    scores = slice_scores(truth, split)
    assert scores["split"] == 1.0 and scores["merged"] == 0.0 and scores["matched"] == 35 / 36
    assert sorted(matched_cells(truth, split)) == list(range(2, 37))  # all but the cut cell
    merged = np.where(np.isin(truth, [2, 3]), 1, truth)  # the first three cells as one segment
    scores = slice_scores(truth, merged)
    assert scores["merged"] == 1.0 and scores["matched"] == 33 / 36 and scores["rand_error"] > 0
    assert slice_scores(truth, np.zeros_like(truth))["matched"] == 0.0


def test_a_hand_made_grid_is_segmented_cell_for_cell() -> None:
    image, truth = _grid()
    noisy = image + np.random.default_rng(0).normal(0, 10, image.shape)
    for picture in (image, noisy, noisy.astype(np.float32) / 1000):  # any scale and dtype
        scores = slice_scores(truth, segment_slice(picture))
        assert scores["matched"] >= 0.9, scores


def test_clean_slices_give_more_cells_than_degraded_ones() -> None:
    plant = simulate_plant(shape=(12, 128, 128), seed=5)
    deep = slice(8, 12)
    clean = evaluate(plant.clean[deep], labels=plant.labels[deep])["result"]["per_slice"]
    observed = evaluate(plant.observed[deep], labels=plant.labels[deep])["result"]["per_slice"]
    assert np.nanmean(clean["matched"]) > np.nanmean(observed["matched"]) + 0.1
    assert np.nanmean(clean["rand_error"]) < np.nanmean(observed["rand_error"])


@pytest.fixture(scope="module")
def filled_plant():
    """A small plant whose deepest slices are tissue from edge to edge (seed 3 of this shape)."""
    return simulate_plant(shape=(16, 128, 128), seed=3)


def _deep_scores(stack: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Over the slices: the share of true cells found, of the true tissue covered by segments, and
    the share of true cells found if segments were dropped by the former tissue decision (a mask
    relative to the slice's own darkest glow, `tissue_mask(slice)`)."""
    found, covered, before = [], [], []
    for image, cells in zip(stack, truth, strict=True):
        segments = segment_slice(image)
        found.append(slice_scores(cells, segments)["matched"])
        covered.append(((segments > 0) & (cells > 0)).sum() / (cells > 0).sum())
        inside = np.bincount(segments.ravel(), weights=tissue_mask(image).ravel())
        share = inside / np.maximum(np.bincount(segments.ravel()), 1)
        before.append(slice_scores(cells, np.where(share[segments] < 0.5, 0, segments))["matched"])
    return float(np.mean(found)), float(np.mean(covered)), float(np.mean(before))


def test_deep_slices_of_tissue_from_edge_to_edge_keep_their_cells(filled_plant) -> None:
    deep = slice(11, 16)
    assert (filled_plant.labels[deep] > 0).mean() > 0.95  # the case: hardly any background
    found, covered, before = _deep_scores(filled_plant.clean[deep], filled_plant.labels[deep])
    assert covered > 0.98 and found >= 0.7, (found, covered)
    assert found > before + 0.15  # the former decision dropped whole regions of large dark cells
    degraded, covered, _ = _deep_scores(filled_plant.observed[deep], filled_plant.labels[deep])
    assert covered > 0.95 and 0.3 < degraded < found - 0.1


def test_stacks_the_simulator_did_not_make_are_segmented_alike(filled_plant) -> None:
    """Mirrored and transposed, as floats of another scale and offset: the same cells are found.
    With larger pixels (cells of half the area in pixels) the default still finds most of them."""
    deep = slice(11, 16)
    found, _, _ = _deep_scores(filled_plant.clean[deep], filled_plant.labels[deep])
    flipped = np.flip(filled_plant.clean[deep], -1).astype(np.float32) / 1000 + 3
    assert _deep_scores(flipped, np.flip(filled_plant.labels[deep], -1))[0] == pytest.approx(found, abs=0.02)
    turned = np.swapaxes(filled_plant.clean[deep], 1, 2)
    assert _deep_scores(turned, np.swapaxes(filled_plant.labels[deep], 1, 2))[0] == pytest.approx(
        found, abs=0.02
    )
    coarse = simulate_plant(shape=(16, 96, 96), voxel_size=(1.0, 0.35, 0.35), seed=3)
    found, covered, _ = _deep_scores(coarse.clean[deep], coarse.labels[deep])
    assert found >= 0.65 and covered > 0.98


def _plant_files(tmp_path, depth: int):
    """A small simulated plant, its clean stack and labels written as files (their paths)."""
    plant = simulate_plant(shape=(depth, 64, 64), seed=6)
    write_stack(tmp_path / "clean.tif", plant.clean)
    write_stack(tmp_path / "labels.tif", plant.labels)
    return plant, str(tmp_path / "clean.tif"), str(tmp_path / "labels.tif")


def test_evaluate_command_scores_segmentation_by_depth(tmp_path, capsys) -> None:
    plant, clean, labels = _plant_files(tmp_path, 6)
    out = tmp_path / "scores.json"
    assert main(["evaluate", clean, "--labels", labels, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "cells found" in table and "Rand error, split, merged" in table
    values = json.loads(out.read_text())["result"]["per_slice"]["matched"]
    assert len(values) == 6 and all(v is None or 0.0 <= v <= 1.0 for v in values)
    write_stack(tmp_path / "short.tif", plant.labels[:4])
    assert main(["evaluate", str(tmp_path / "clean.tif"), "--labels", str(tmp_path / "short.tif")]) == 2
    assert "has shape" in capsys.readouterr().err


def test_segment_without_labels_counts_cells_of_result_and_input(tmp_path, capsys) -> None:
    image, _ = _grid()
    sharp = np.stack([image] * 3).astype(np.uint16)
    blurred = np.stack([np.full_like(image, image.mean())] * 3).astype(np.uint16)  # no walls left
    scores = evaluate(sharp, input=blurred, segment=True)
    assert scores["metrics"][-1] == "cells"
    assert np.all(np.abs(scores["result"]["per_slice"]["cells"] - 36) <= 3)
    assert np.all(scores["input"]["per_slice"]["cells"] == 0)
    write_stack(tmp_path / "sharp.tif", sharp)
    write_stack(tmp_path / "blurred.tif", blurred)
    assert (
        main(["evaluate", str(tmp_path / "sharp.tif"), "--input", str(tmp_path / "blurred.tif"), "--segment"])
        == 0
    )
    assert "cells: how many the segmentation finds" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_a_flat_slice_has_no_cells(value) -> None:
    assert not segment_slice(np.full((32, 32), value)).any()


def test_a_slice_of_noise_alone_has_no_cells() -> None:
    """Empty slices above the sample: their noise is not cut into cells (it was, by the watershed),
    while the same noise on a wall grid leaves the cells found."""
    rng = np.random.default_rng(1)
    for noise in (rng.normal(100, 10, (96, 96)), rng.poisson(5, (96, 96)).astype(np.uint16)):
        assert not segment_slice(noise).any()
    image, truth = _grid()
    assert slice_scores(truth, segment_slice(image / 4 + rng.normal(100, 10, image.shape)))["matched"] >= 0.9


def _deep_found(stack: np.ndarray, truth: np.ndarray, volume: bool) -> float:
    segments = segment_stack(stack, volume=volume)
    return float(np.mean([slice_scores(truth[z], segments[z])["matched"] for z in range(11, 16)]))


def test_a_volume_segmentation_finds_more_deep_cells_than_one_per_slice(filled_plant) -> None:
    """Cells the slice grazes take their seed and borders from the slices above and below."""
    for stack, gain in ((filled_plant.clean, 0.0), (filled_plant.observed, 0.03)):
        per_slice = _deep_found(stack, filled_plant.labels, volume=False)
        in_3d = _deep_found(stack, filled_plant.labels, volume=True)
        assert in_3d > per_slice + gain, (per_slice, in_3d)
    # turned upside down, as floats of another scale and offset: the same cells
    turned = np.flip(filled_plant.observed, 0).astype(np.float32) / 1000 + 3
    back = segment_stack(turned, volume=True)[::-1]
    found = np.mean([slice_scores(filled_plant.labels[z], back[z])["matched"] for z in range(11, 16)])
    assert found == pytest.approx(in_3d, abs=0.02)
    for volume in (True, False):
        with pytest.raises(DqlrError, match="needs a ZYX stack"):
            segment_stack(filled_plant.clean[0], volume=volume)


def test_evaluate_command_scores_a_volume_segmentation(tmp_path, capsys) -> None:
    plant, clean, labels = _plant_files(tmp_path, 8)
    out = tmp_path / "scores.json"
    assert main(["evaluate", clean, "--labels", labels, "--volume", "--json", str(out)]) == 0
    assert "segmentation (one 3-D watershed of the stack)" in capsys.readouterr().out
    scores = json.loads(out.read_text())
    assert scores["segmentation"] == "volume"
    expected = segment_stack(plant.clean, volume=True)
    values = scores["result"]["per_slice"]["matched"]
    for z, value in enumerate(values):
        truth = slice_scores(plant.labels[z], expected[z])["matched"]
        assert value == pytest.approx(truth, nan_ok=True) if np.isfinite(truth) else value is None
    assert main(["evaluate", clean, "--volume"]) == 2
    assert "needs --labels or --segment" in capsys.readouterr().err
