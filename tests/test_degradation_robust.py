"""The degradation estimate on ordinary stacks our simulator did not make: it never raises, says in
`notes` what fell back, and marks the blur curve unreliable where it could not be measured.

All stacks are made here, small and seeded: a dense regular wall grid (1-px walls every 8 px),
irregular (Voronoi) walls, pure noise and degenerate stacks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from dqlr.degradation import DepthDegradation, estimate_degradation, estimate_noise
from dqlr.degradation.noise import noise_model
from dqlr.errors import DqlrError


def wall_grid(shape: tuple[int, int, int], degrade: bool = True, seed: int = 0) -> np.ndarray:
    """Bright 1-px walls every 8 px, dimming (to 40 %) and blurring (sigma 0.5 -> 2.5) with depth,
    Poisson noise on a dark level of 5 photons, uint16."""
    n_z, n_y, n_x = shape
    walls = np.zeros((n_y, n_x))
    walls[4::8, :] = 1.0
    walls[:, 4::8] = 1.0
    return _image(walls, n_z, degrade, seed, 1000.0)


def voronoi_walls(shape: tuple[int, int, int], degrade: bool = True, seed: int = 0) -> np.ndarray:
    """Irregular cells about 8 px across (1-px Voronoi boundaries), degrading like wall_grid."""
    n_z, n_y, n_x = shape
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, [n_y, n_x], (n_y * n_x // 64, 2))
    yy, xx = np.mgrid[:n_y, :n_x]
    label = ((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2).argmin(-1)
    walls = ((label != np.roll(label, 1, 0)) | (label != np.roll(label, 1, 1))).astype(float)
    return _image(walls, n_z, degrade, seed, 300.0)


def _image(walls: np.ndarray, n_z: int, degrade: bool, seed: int, bright: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for z in range(n_z):
        t = z / (n_z - 1) if degrade else 0.0
        signal = bright * (1.0 - 0.6 * t) * ndimage.gaussian_filter(walls, 0.5 + 2.0 * t)
        out.append(rng.poisson(5.0 + signal))
    return np.asarray(out, dtype=np.uint16)


def true_extra_blur(n_z: int, stop: int) -> np.ndarray:
    """Extra blur sigma of _image's slices beyond the rms of the reference slices [0, stop)."""
    sigma = 0.5 + 2.0 * np.arange(n_z) / (n_z - 1)
    return np.sqrt(np.clip(sigma**2 - np.mean(sigma[:stop] ** 2), 0.0, None))


def check_record(est: DepthDegradation, n_z: int) -> None:
    """Finite numbers of the right length, and a strict-JSON round trip that keeps everything."""
    arrays = ("blur_sigma_px", "blur_sigma_px_error", "halo_fraction", "attenuation", "background")
    for name in arrays:
        value = getattr(est, name)
        assert value.shape == (n_z,) and np.all(np.isfinite(value)), name
    assert np.all(np.isfinite([est.gain, est.read_noise, est.offset])) and est.gain >= 0
    back = DepthDegradation.from_dict(json.loads(json.dumps(est.to_dict(), allow_nan=False)))
    for name in arrays:
        np.testing.assert_array_equal(getattr(back, name), getattr(est, name))
    assert (back.notes, back.reliable, back.gain) == (est.notes, est.reliable, est.gain)


FALLBACK = "noise: too few flat regions; gain and read noise fitted to high-pass residuals instead"
GRIDS = {
    "uint16 12x96x96": wall_grid((12, 96, 96)),
    "uint16 8x64x64": wall_grid((8, 64, 64)),
    "bottom-up 12x96x96": wall_grid((12, 96, 96))[::-1],
    "float32 12x96x96": wall_grid((12, 96, 96)).astype(np.float32),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_wall_grids_that_used_to_fail(name: str) -> None:
    """The stacks of issue 13: photon transfer finds too few flat regions (and still says so), the
    estimate falls back to high-pass residuals and carries on. A regular grid's spectrum is peaks
    with empty bins between them; when nothing can be measured otherwise, the blur is read across
    those gaps (and says so). Where the curve is called reliable it must match the true blur within
    its own stated error (or 0.5 px); the bottom-up grid (sharper with depth) is never reliable.
    The conditioning path (blur_only, which places the reference from binned slices) gives the
    same reference slices, blur curve and notes on these stacks the simulator did not make."""
    stack = GRIDS[name]
    with pytest.raises(DqlrError, match="too few flat regions"):
        estimate_noise(stack)
    for fraction in (0.3, 0.2):
        est = estimate_degradation(stack, reference_fraction=fraction)
        check_record(est, len(stack))
        fast = estimate_degradation(stack, reference_fraction=fraction, blur_only=True)
        assert fast.reference_slices == est.reference_slices and fast.notes == est.notes
        np.testing.assert_array_equal(fast.blur_sigma_px, est.blur_sigma_px)
        assert est.notes[0].startswith("noise: too few flat regions")
        stop = est.reference_slices[1]
        if name.startswith("bottom-up"):
            assert not est.reliable and np.all(est.blur_sigma_px == 0)
            continue
        assert est.reliable and any("regular structure" in n for n in est.notes)
        miss = np.abs(est.blur_sigma_px - true_extra_blur(len(stack), stop))[stop:]
        assert np.all(miss <= np.maximum(est.blur_sigma_px_error[stop:], 0.5))
    if not name.startswith("bottom-up"):  # dims with depth: 0.4 of the reference (reads 0.26-0.32)
        assert est.attenuation[-1] < 0.5


def test_noise_fallback_recovers_gain() -> None:
    """A wall grid with camera gain 3, read noise 2 and offset 100: photon transfer fails; the
    high-pass fallback gets the gain and the variance at the brightest walls within 20 % (measured
    -16 % .. +6 % and -14 % .. +5 % over 8 seeds and both grid sizes; this seed: -12 %, -11 %)."""
    rng = np.random.default_rng(3)
    photons = wall_grid((12, 96, 96), seed=3).astype(np.float64)
    stack = 100.0 + 3.0 * photons + rng.normal(0.0, 2.0, photons.shape)
    with pytest.raises(DqlrError):
        estimate_noise(stack)
    (gain, read_noise, offset), notes = noise_model(stack)
    assert gain == pytest.approx(3.0, rel=0.2)
    assert notes == [FALLBACK]
    bright = float(np.percentile(stack, 99.5))
    expected = 3.0 * (bright - 100.0) + 4.0
    assert gain * (bright - offset) + read_noise**2 == pytest.approx(expected, rel=0.2)
    assert estimate_degradation(stack).gain == gain


def test_irregular_walls_blur_is_measured_and_reliable() -> None:
    """Irregular walls, 128 px: the noise falls back, yet the blur is measured in every slice below
    the reference, rises with depth and ends within 15 % of the truth (measured 2.37 vs 2.37 px),
    with a small finite error (measured 0.02-0.06 px: statistical only, the first slice below the
    reference reads 0.1 px high); stored bottom-up, deeper slices are sharper and the curve is
    marked unreliable."""
    stack = voronoi_walls((12, 128, 128))
    est = estimate_degradation(stack, reference_fraction=0.3)
    check_record(est, 12)
    first, stop = est.reference_slices
    assert est.reliable
    assert est.notes == [FALLBACK]
    assert np.all(np.diff(est.blur_sigma_px[stop:]) > 0)
    assert est.blur_sigma_px[-1] == pytest.approx(true_extra_blur(12, stop)[-1], rel=0.15)
    error = est.blur_sigma_px_error
    assert np.all(error[:stop] == 0) and np.all((error[stop:] > 0) & (error[stop:] < 0.5))
    flipped = estimate_degradation(stack[::-1], reference_fraction=0.3)
    check_record(flipped, 12)
    assert not flipped.reliable and any("sharper" in n for n in flipped.notes)


def test_no_depth_degradation() -> None:
    """The same walls with no change in depth: the blur stays below 0.2 px (measured 0.07) and the
    curve is reliable (measured, flat); so is the regular grid's, read across the gaps of its
    spectrum (measured 0.06 px), with no attenuation."""
    est = estimate_degradation(voronoi_walls((12, 128, 128), degrade=False), reference_fraction=0.3)
    check_record(est, 12)
    assert est.reliable and est.blur_sigma_px.max() < 0.2 and est.attenuation.min() > 0.9
    grid = estimate_degradation(wall_grid((12, 96, 96), degrade=False), reference_fraction=0.3)
    check_record(grid, 12)
    assert grid.reliable and grid.blur_sigma_px.max() < 0.2 and grid.attenuation.min() > 0.8


def test_noise_only_stack() -> None:
    """Nothing but Poisson noise: no blur can be measured, so the curve is unreliable, blur 0."""
    stack = np.random.default_rng(1).poisson(20.0, (10, 64, 64)).astype(np.uint16)
    est = estimate_degradation(stack, reference_fraction=0.3)
    check_record(est, 10)
    assert not est.reliable and np.all(est.blur_sigma_px == 0)
    assert any(n.startswith("blur: not measurable") for n in est.notes)


@pytest.mark.parametrize(
    "stack",
    [
        np.full((3, 48, 48), 7, np.uint16),  # constant
        np.zeros((4, 48, 48), np.float32),
        (np.random.default_rng(0).random((4, 48, 48)) > 0.5).astype(np.uint8),  # binary
        np.random.default_rng(0).normal(-1000.0, 5.0, (3, 48, 48)).astype(np.float32),  # negative
    ],
    ids=["constant", "zeros", "binary", "negative float"],
)
def test_degenerate_stacks_never_raise(stack: np.ndarray) -> None:
    """Stacks with no flat-region noise, no signal or no tissue get defaults, each with a note."""
    est = estimate_degradation(stack, reference_fraction=0.3)
    check_record(est, len(stack))
    assert not est.reliable and est.notes[0].startswith("noise:")


def test_old_records_load_with_defaults() -> None:
    """Records saved before notes, reliable and the blur error existed still load."""
    est = estimate_degradation(wall_grid((8, 64, 64)))
    old = {k: v for k, v in est.to_dict().items() if k not in ("notes", "reliable", "blur_sigma_px_error")}
    back = DepthDegradation.from_dict(old)
    assert back.notes == [] and back.reliable and back.blur_sigma_px_error is None
    np.testing.assert_array_equal(back.blur_sigma_px, est.blur_sigma_px)
