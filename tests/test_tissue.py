"""The one tissue mask: it must cover a plant's tissue and not the empty surroundings, keep exactly the
definition the degradation estimate was built on, and be the mask both degradation and metrics use."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import dqlr
import dqlr.degradation.estimate
import dqlr.degradation.synthesis
import dqlr.evaluation.metrics
import dqlr.tissue
from dqlr.errors import DqlrError
from dqlr.simulation import SimulatedPlant, simulate_plant
from dqlr.tissue import TISSUE_SIGMA_PX, tissue_mask

SLICES = range(3, 11)  # the tissue grows from a fifth to three quarters of the slice here


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(shape=(24, 128, 128), seed=0)


def _regions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue well inside its outline, and surroundings well away from it (2 mask sigmas)."""
    body = ndimage.binary_fill_holes(ndimage.binary_closing(labels > 0, iterations=3))
    inner = ndimage.binary_erosion(body, iterations=8)
    far = ndimage.distance_transform_edt(~body) > 2 * TISSUE_SIGMA_PX
    return inner, far


@pytest.mark.parametrize("kind", ["observed", "clean"])
def test_mask_covers_tissue_and_not_surroundings(plant: SimulatedPlant, kind: str) -> None:
    for z in SLICES:
        inner, far = _regions(plant.labels[z])
        assert inner.any() and far.any(), z
        mask = tissue_mask(getattr(plant, kind)[z])
        assert mask[inner].mean() > 0.9, (kind, z)
        assert mask[far].mean() < 0.01, (kind, z)


def test_mask_ignores_gain_and_offset(plant: SimulatedPlant) -> None:
    plane = plant.observed[6].astype(np.float64)
    mask = tissue_mask(plane)
    assert 0.2 < mask.mean() < 0.8
    np.testing.assert_array_equal(tissue_mask(0.25 * plane + 100.0), mask)


def test_mask_is_empty_without_tissue() -> None:
    assert not tissue_mask(np.full((32, 32), 7.0)).any()
    plane = np.random.default_rng(0).normal(100.0, 1.0, (32, 32))
    assert not tissue_mask(plane, background=plane.max() + 1.0).any()


def test_mask_keeps_the_definition_the_degradation_was_estimated_with(plant: SimulatedPlant) -> None:
    """Shipped models are conditioned on estimate_degradation's numbers: the level (0.3 of the way
    to the 99th percentile of the smoothed slice) and the smoothing must not drift."""
    plane = plant.observed[8].astype(np.float64)
    for sigma, background in ((8.0, 300.0), (4.0, None), (12.0, float(plane.min()))):
        smooth = ndimage.gaussian_filter(plane, sigma)
        dark = np.percentile(smooth, 1) if background is None else background
        high = np.percentile(smooth, 99)
        expected = smooth > dark + 0.3 * (high - dark)
        np.testing.assert_array_equal(tissue_mask(plane, sigma, background), expected)


def test_bad_input_is_a_one_line_error() -> None:
    with pytest.raises(DqlrError):
        tissue_mask(np.zeros((4, 32, 32)))
    with pytest.raises(DqlrError):
        tissue_mask(np.zeros((32, 32)), sigma=0.0)


def test_degradation_and_metrics_use_this_mask() -> None:
    assert dqlr.degradation.estimate.tissue_mask is dqlr.tissue.tissue_mask
    assert dqlr.degradation.synthesis.tissue_mask is dqlr.tissue.tissue_mask
    assert dqlr.evaluation.metrics.tissue_mask is dqlr.tissue.tissue_mask


def test_membrane_contrast_is_measured_inside_the_mask(plant: SimulatedPlant) -> None:
    plane = plant.observed[6].astype(np.float64)
    smoothed = ndimage.gaussian_filter(plane, 1.0)
    floor = np.percentile(smoothed, 1)
    median, bright = np.percentile(smoothed[tissue_mask(plane)], [50, 95])
    expected = (bright - median) / (bright + median - 2 * floor)
    assert dqlr.evaluation.metrics.membrane_contrast(plane) == pytest.approx(expected, rel=1e-12)


def test_no_other_tissue_mask_in_the_package() -> None:
    package = Path(dqlr.__file__).parent
    defined = [
        f"{path.relative_to(package)}:{node.name}"
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and "tissue_mask" in node.name
    ]
    assert defined == ["tissue.py:tissue_mask"]
