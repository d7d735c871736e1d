"""The learned segmenter: the watershed cuts a true wall map cell for cell, a short training learns
walls it can find on a stack it never saw (hand-made, flipped, float32), the file round-trips and
other files are refused in one line, and `dqlr train-segmenter` / `evaluate --segmenter` use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

import dqlr
from dqlr.cli import main
from dqlr.errors import DqlrError
from dqlr.evaluation.boundaries import (
    BoundarySettings,
    cut_along_walls,
    load_boundary_model,
    save_boundary_model,
    segment_stack_learned,
    train_boundary_model,
    wall_probability,
    wall_target,
)
from dqlr.evaluation.segmentation import slice_scores
from dqlr.io import write_stack


def voronoi_stack(depth: int = 6, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hand-made 3-D Voronoi cells (not the simulator's): blurred bright walls with noise, labels."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (40, 3)) * np.array([depth * 4.0, size, size])
    grid = np.stack(np.meshgrid(np.arange(depth) * 4.0, np.arange(size), np.arange(size), indexing="ij"), -1)
    labels = np.argmin(((grid[..., None, :] - points) ** 2).sum(-1), -1).astype(np.int32) + 1
    walls = np.stack([wall_target(plane) for plane in labels])
    image = 20 + 180 * ndimage.gaussian_filter(walls, (0, 1.0, 1.0))
    return image + rng.normal(0, 8, image.shape), labels


@pytest.fixture(scope="module")
def segmenter():
    stacks, labels = zip(*(voronoi_stack(seed=s) for s in (1, 2)), strict=True)
    return train_boundary_model(
        stacks, labels, depth_share=1.0, steps=120, channels=8, crop=64, progress=False
    )


def test_a_true_wall_map_is_cut_cell_for_cell() -> None:
    _, labels = voronoi_stack()
    settings = BoundarySettings(threshold=0.5, seed_sigma_px=1.0)
    found = [slice_scores(p, cut_along_walls(wall_target(p), settings))["matched"] for p in labels]
    assert min(found) >= 0.85 and np.mean(found) >= 0.9, found  # misses: cells a few pixels wide


def test_training_learns_walls_of_a_stack_it_never_saw(segmenter) -> None:
    image, labels = voronoi_stack(seed=7)
    flipped = image[::-1].astype(np.float32) / 1000  # bottom-up, float32, another scale
    truth = labels[::-1]
    walls = np.stack([wall_target(plane) for plane in truth]) > 0
    probability = np.stack([wall_probability(flipped, z, segmenter) for z in range(len(flipped))])
    assert probability[walls].mean() > probability[~walls].mean() + 0.3
    cells = segment_stack_learned(flipped, segmenter)
    assert cells.dtype == np.int32 and cells.shape == flipped.shape
    found = np.mean([slice_scores(t, c)["matched"] for t, c in zip(truth, cells, strict=True)])
    assert found >= 0.6, found
    assert segmenter.trained_on["steps"] == 120 and segmenter.trained_on["slices"] == 12


def test_an_empty_slice_has_no_cells(segmenter) -> None:
    image, _ = voronoi_stack()
    image[2] = 20 + np.random.default_rng(0).normal(0, 8, image[2].shape)
    cells = segment_stack_learned(image, segmenter)
    assert not cells[2].any() and cells[1].any()


def test_the_file_round_trips_and_other_files_are_refused(segmenter, tmp_path) -> None:
    path = save_boundary_model(segmenter, tmp_path / "seg.pt")
    loaded = load_boundary_model(path)
    image, _ = voronoi_stack(seed=3)
    assert np.array_equal(wall_probability(image, 2, loaded), wall_probability(image, 2, segmenter))
    assert loaded.settings == segmenter.settings and loaded.trained_on == segmenter.trained_on
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    for bad, message in (
        (tmp_path / "missing.pt", "segmenter file not found"),
        (tmp_path / "junk.pt", "not a dqlr segmenter file"),
        (dqlr.api.load_model().path, "not a dqlr segmenter file"),
    ):
        with pytest.raises(DqlrError, match=message) as error:
            load_boundary_model(bad)
        assert "\n" not in str(error.value)


def test_training_needs_labels_with_walls() -> None:
    image, labels = voronoi_stack()
    with pytest.raises(DqlrError, match="nothing to learn walls from"):
        train_boundary_model([image], [np.ones_like(labels)], steps=1, progress=False)
    with pytest.raises(DqlrError, match="labels of the same shape"):
        train_boundary_model([image], [labels[:, :10]], steps=1, progress=False)


def test_cli_trains_a_segmenter_and_evaluate_uses_it(tmp_path, capsys) -> None:
    for seed in (1, 2):
        image, labels = voronoi_stack(seed=seed)
        write_stack(tmp_path / f"s{seed}.tif", image.astype(np.uint16), (1.0, 0.2, 0.2))
        write_stack(tmp_path / f"l{seed}.tif", labels.astype(np.uint16), (1.0, 0.2, 0.2))
    out = tmp_path / "seg.pt"
    args = ["train-segmenter", str(tmp_path / "s1.tif"), str(tmp_path / "s2.tif"), "--labels"]
    args += [str(tmp_path / "l1.tif"), str(tmp_path / "l2.tif"), "-o", str(out), "--steps", "60"]
    assert main(args) == 0 and out.is_file()
    assert main(args) != 0  # the output exists: refused
    assert "exists" in capsys.readouterr().err
    report = tmp_path / "scores.json"
    code = main(
        ["evaluate", str(tmp_path / "s1.tif"), "--labels", str(tmp_path / "l1.tif")]
        + ["--segmenter", str(out), "--json", str(report)]
    )
    assert code == 0
    scores = json.loads(report.read_text())
    assert scores["segmentation"] == "learned"
    assert np.nanmean(scores["result"]["per_slice"]["matched"]) > 0.3
    with pytest.raises(DqlrError, match="drop --volume"):
        dqlr.evaluate(np.zeros((4, 32, 32)), labels=np.ones((4, 32, 32), int), volume=True, segmenter=out)
