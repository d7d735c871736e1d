"""The degradation estimated from a stack alone must match the simulator's truth, and degrading
upper slices with it must make them look like the deep slices they imitate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, stats

from dqlr.degradation import (
    DepthDegradation,
    degrade,
    estimate_degradation,
    estimate_noise,
    make_pairs,
    tissue_centres,
)
from dqlr.errors import DqlrError
from dqlr.simulation import Optics, SimulatedPlant, simulate_plant

SHAPE = (32, 192, 192)  # big enough for the tissue content to average out, ~3 s to simulate
SMALL = (24, 128, 128)


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def estimate(plant: SimulatedPlant) -> DepthDegradation:
    return estimate_degradation(plant.observed, plant.voxel_size)


@pytest.fixture(scope="module")
def small() -> SimulatedPlant:
    return simulate_plant(shape=SMALL, seed=0)


def true_extra_sigma(plant: SimulatedPlant, est: DepthDegradation) -> np.ndarray:
    """Lateral PSF sigma beyond the reference slices' (rms), in pixels."""
    psf = plant.truth["psf_xy_um"]
    first, stop = est.reference_slices
    ref = np.sqrt(np.mean(psf[first:stop] ** 2))
    return np.sqrt(np.clip(psf**2 - ref**2, 0.0, None)) / plant.voxel_size[2]


def true_attenuation(plant: SimulatedPlant, est: DepthDegradation) -> np.ndarray:
    first, stop = est.reference_slices
    att = plant.truth["attenuation"]
    return att / att[first:stop].mean()


@pytest.mark.parametrize("noise", [1.0, 2.0])
def test_estimate_noise_recovers_camera(small: SimulatedPlant, noise: float) -> None:
    """Gain within 20 %, read noise within 30 %, offset within 3 ADU (measured on these plants:
    gain -1 % / 0 %, read noise -4 % / +4 %, offset -1.6 / +1.8 ADU)."""
    p = small if noise == 1.0 else simulate_plant(shape=SMALL, seed=0, noise=noise, degradation=1.5)
    gain, read_noise, offset = estimate_noise(p.observed)
    assert gain == pytest.approx(float(p.truth["gain"]), rel=0.2)
    assert read_noise == pytest.approx(float(p.truth["read_noise_adu"]), rel=0.3)
    assert offset == pytest.approx(float(p.truth["offset_adu"]), abs=3.0)


def test_estimate_noise_is_unit_free(small: SimulatedPlant) -> None:
    """Rescaled float data give the same camera, in the new units (to 1e-6)."""
    gain, read_noise, offset = estimate_noise(small.observed)
    scaled = (small.observed.astype(np.float32) - 100.0) / 1000.0
    g2, r2, o2 = estimate_noise(scaled)
    assert g2 * 1000 == pytest.approx(gain, rel=1e-4)
    assert r2 * 1000 == pytest.approx(read_noise, rel=1e-4)
    assert o2 * 1000 + 100 == pytest.approx(offset, abs=0.05)


def test_blur_grows_with_depth_and_tracks_truth(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """Extra blur rises with depth: Spearman > 0.9 against the true extra PSF sigma below the
    reference and the deepest value within 30 % (measured: 0.999 and +7 %; the estimate also
    holds the axial blur, so it reads a little high)."""
    blur = estimate.blur_sigma_px
    truth = true_extra_sigma(plant, estimate)
    first, stop = estimate.reference_slices
    assert np.all(blur[:stop] == 0)
    assert np.all(np.diff(blur) >= 0)
    assert stats.spearmanr(blur[stop:], truth[stop:]).statistic > 0.9
    assert blur[-1] == pytest.approx(truth[-1], rel=0.3)
    assert estimate.reliable and estimate.notes == []


def test_blur_error(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """The blur's standard error is 0 for the reference, positive and under 0.5 px below it
    (measured 0.04-0.41 px, growing with depth), and the deepest blur is within 3 errors of the
    truth (measured +0.25 px, 1.3 errors). The error is statistical only: just below the
    reference the estimate reads 3-7 errors high, the axial blur it folds in."""
    error = estimate.blur_sigma_px_error
    assert error is not None
    first, stop = estimate.reference_slices
    assert np.all(error[:stop] == 0) and np.all((error[stop:] > 0) & (error[stop:] < 0.5))
    deviation = abs(estimate.blur_sigma_px[-1] - true_extra_sigma(plant, estimate)[-1])
    assert deviation < 3 * error[-1]


def test_bottom_up_stack_is_not_reliable(small: SimulatedPlant) -> None:
    """Stored bottom-up, the slices below the reference are sharper than it: the curve (all 0 after
    the monotone fit) is marked unreliable and a note says why."""
    est = estimate_degradation(small.observed[::-1], small.voxel_size)
    assert not est.reliable and np.all(est.blur_sigma_px == 0)
    assert any("sharper" in note for note in est.notes)


def test_attenuation_falls_and_tracks_truth(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """Attenuation is 1 down to the reference's end, then falls; deepest within 30 % of the true
    attenuation relative to the reference (measured: 0.54 vs 0.54). The estimate is the in-tissue
    signal above background, which blur and halo conserve, so no correction is needed."""
    att = estimate.attenuation
    first, stop = estimate.reference_slices
    assert np.all(att[:stop] == 1) and np.all(np.diff(att) <= 0)
    assert att[-1] == pytest.approx(true_attenuation(plant, estimate)[-1], rel=0.3)


def test_halo_and_background(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """Halo rises with depth, deepest within a factor 2 of the truth (measured 0.39 vs 0.35: it is
    an effective haze that also takes up out-of-focus light). Background within 6 ADU of offset +
    stray light in the reference slices (measured ~3 ADU low: the darkest part is picked)."""
    halo = estimate.halo_fraction
    assert np.all(np.diff(halo) >= 0)
    true_halo = plant.truth["halo_fraction"][-1]
    assert true_halo / 2 < halo[-1] < 2 * true_halo
    first, stop = estimate.reference_slices
    true_bg = Optics().offset_adu + Optics().gain * plant.truth["background_photons"]
    np.testing.assert_allclose(estimate.background[first:stop], true_bg[first:stop], atol=6.0)


def test_no_degradation_estimates_none() -> None:
    """With degradation=0 the extra blur stays below 0.8 px (a quarter of what the default
    degradation reaches; measured 0.51 px, from tissue content changing with depth), attenuation
    above 0.85 and the halo below 0.1."""
    p = simulate_plant(shape=SMALL, seed=1, degradation=0.0)
    est = estimate_degradation(p.observed, p.voxel_size)
    assert est.blur_sigma_px.max() < 0.8
    assert est.attenuation.min() > 0.85
    assert est.halo_fraction.max() < 0.1
    assert est.reliable  # measured, and flat


def sharpness(image: np.ndarray, mask: np.ndarray, background: float) -> float:
    """Gradient energy of the sigma=1 smoothed, mean-normalised signal inside the tissue."""
    smooth = ndimage.gaussian_filter(image - background, 1.0)
    gy, gx = np.gradient(smooth / smooth[mask].mean())
    return float(np.mean((gy**2 + gx**2)[mask]))


def noise_level(image: np.ndarray, mask: np.ndarray, background: float) -> float:
    """Noise sigma (MAD of the pixel minus its 8 neighbours) relative to the mean signal."""
    kernel = np.ones((3, 3)) / 8
    kernel[1, 1] = 0
    res = (image - ndimage.convolve(image, kernel))[mask]
    sigma = 1.4826 * np.median(np.abs(res - np.median(res))) / np.sqrt(1.125)
    return float(sigma / (image[mask] - background).mean())


def test_degraded_upper_slices_look_like_deep_ones(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """Reference slices degraded to depth d match real slice d in sharpness (within 30 %; measured
    -2 % and -8 %) and relative noise (within 15 %; measured 1-3 %), and are at least twice as
    close (in log ratio) as the undegraded slices (measured 4-11x too sharp, 25-35 % too clean)."""
    obs = plant.observed.astype(np.float64)
    tissue = plant.labels > 0
    first, stop = estimate.reference_slices
    rng = np.random.default_rng(0)
    for depth in (3 * SHAPE[0] // 4, SHAPE[0] - 1):
        bg = estimate.background[depth]
        out = degrade(obs[first:stop], estimate.at(depth), rng).astype(np.float64)
        for measure in (sharpness, noise_level):
            real = measure(obs[depth], tissue[depth], bg)
            done = np.mean([measure(out[i], tissue[z], bg) for i, z in enumerate(range(first, stop))])
            raw = np.mean([measure(obs[z], tissue[z], estimate.background[z]) for z in range(first, stop)])
            tol = 0.3 if measure is sharpness else 0.15
            assert done == pytest.approx(real, rel=tol), (measure.__name__, depth)
            assert abs(np.log(done / real)) < 0.5 * abs(np.log(raw / real)), (measure.__name__, depth)


def test_degrade_identity_and_noise_budget() -> None:
    """No degradation returns the input exactly; on a flat noisy image the output noise variance
    equals the noise model at the output level (within 5 %) and its mean is the expected one."""
    rng = np.random.default_rng(1)
    gain, read, offset, photons = 8.0, 12.0, 100.0, 50.0
    image = offset + gain * rng.poisson(photons, (2, 256, 256)) + rng.normal(0, read, (2, 256, 256))
    same = {
        "blur_sigma_px": 0.0,
        "halo_fraction": 0.0,
        "halo_sigma_px": 16.0,
        "attenuation": 1.0,
        "background": 110.0,
        "source_background": 110.0,
        "gain": gain,
        "read_noise": read,
        "offset": offset,
    }
    np.testing.assert_allclose(degrade(image, same, rng), image, rtol=1e-6)
    deep = {**same, "blur_sigma_px": 2.0, "halo_fraction": 0.3, "attenuation": 0.4, "background": 120.0}
    out = degrade(image, deep, rng).astype(np.float64)
    level = 0.4 * (offset + gain * photons - 110.0) + 120.0
    assert out.mean() == pytest.approx(level, rel=0.01)
    expected_var = gain * (level - offset) + read**2
    assert out[:, 20:-20, 20:-20].var() == pytest.approx(expected_var, rel=0.05)
    quiet = degrade(image, deep, np.random.default_rng(2), noise=False)
    assert quiet.var() < 0.2 * expected_var


def test_degrade_a_region_is_the_whole_degraded_there_with_the_same_noise() -> None:
    """Pairs keep a crop of a block with margins: degrading that region alone (noise drawn for it
    only, blur unpadded in float32 when the margins reach as far as the blur) gives the whole
    block's degraded crop: the same blur to float32 precision and noise of the same variance."""
    rng = np.random.default_rng(3)
    gain, read, offset = 8.0, 12.0, 100.0
    sharp = ndimage.gaussian_filter(rng.uniform(0, 400, (3, 200, 200)), (0, 2, 2))
    image = offset + gain * rng.poisson(sharp) + rng.normal(0, read, sharp.shape)
    params = {
        "blur_sigma_px": 3.0,
        "halo_fraction": 0.4,
        "halo_sigma_px": 16.0,
        "attenuation": 0.5,
        "background": 115.0,
        "source_background": 114.0,
        "gain": gain,
        "read_noise": read,
        "offset": offset,
    }
    for margin in (60, 10):  # wide enough for the blur (unpadded, float32), and too narrow (padded)
        region = (slice(margin, margin + 64), slice(margin, margin + 64))
        whole = degrade(image, params, rng, noise=False)[(Ellipsis, *region)]
        alone = degrade(image, params, rng, noise=False, region=region)
        assert alone.shape == (3, 64, 64) and alone.dtype == np.float32
        np.testing.assert_allclose(alone, whole, atol=1e-3 * whole.std())
    noisy_whole = [degrade(image, params, np.random.default_rng(s))[(Ellipsis, *region)] for s in range(8)]
    noisy_alone = [degrade(image, params, np.random.default_rng(s), region=region) for s in range(8)]
    assert np.var(np.array(noisy_alone) - whole) == pytest.approx(
        np.var(np.array(noisy_whole) - whole), rel=0.05
    )


def test_make_pairs_shapes_and_determinism(small: SimulatedPlant) -> None:
    est = estimate_degradation(small.observed, small.voxel_size)
    degraded, targets, depths = make_pairs(small.observed, est, 6, 48, 3, np.random.default_rng(5))
    assert degraded.shape == targets.shape == (6, 3, 48, 48)
    assert degraded.dtype == targets.dtype == np.float32 and depths.dtype == np.int64
    first, stop = est.reference_slices
    assert np.all(depths >= stop) and np.all(depths < SMALL[0])
    assert np.all(targets == np.round(targets))  # untouched slices of the uint16 stack
    assert np.all(degraded.mean(axis=(1, 2, 3)) < targets.mean(axis=(1, 2, 3)))  # attenuated
    again = make_pairs(small.observed, est, 6, 48, 3, np.random.default_rng(5))
    for a, b in zip((degraded, targets, depths), again, strict=True):
        np.testing.assert_array_equal(a, b)
    # tissue centres computed once and handed in (as the training sampler does): the same pairs
    centres = tissue_centres(small.observed, est, 3)
    assert len(centres) > 0 and centres.shape[1] == 2
    given = make_pairs(small.observed, est, 6, 48, 3, np.random.default_rng(5), centres)
    for a, b in zip((degraded, targets, depths), given, strict=True):
        np.testing.assert_array_equal(a, b)
    other = make_pairs(small.observed, est, 6, 48, 3, np.random.default_rng(6))
    assert not np.array_equal(other[0], degraded)
    with pytest.raises(DqlrError, match="crop"):
        make_pairs(small.observed, est, 1, 256, 3, np.random.default_rng(0))
    with pytest.raises(DqlrError, match="no slices left"):
        make_pairs(small.observed, est, 1, 32, SMALL[0], np.random.default_rng(0))


def test_pairs_blurred_along_z_mix_neighbouring_slices(small: SimulatedPlant) -> None:
    """With axial_px, a pair's slices take light from their neighbours (reflected beyond the
    stack's ends), as deep slices do: on a stack flat in x and y whose slices alternate dim and
    bright, the degraded windows keep the alternation with lateral blur alone and lose most of it
    with the blur along z (measured: 288 and 1.4 ADU between neighbouring slices)."""
    est = estimate_degradation(small.observed, small.voxel_size)
    z = np.arange(SMALL[0])
    striped = np.broadcast_to((150.0 + 400.0 * (z % 2))[:, None, None], SMALL)

    def alternation(axial_px: float) -> float:
        degraded, _, _ = make_pairs(striped, est, 32, 32, 4, np.random.default_rng(1), axial_px=axial_px)
        return float(np.abs(np.diff(degraded.mean(axis=(2, 3)), axis=1)).mean())

    lateral, axial = alternation(0.0), alternation(2.0)
    assert lateral > 100.0 and axial < 0.3 * lateral


def test_degrade_tops_up_the_noise_of_slices_blurred_along_z_before() -> None:
    """Slices already blurred along z keep less of their own noise (`noise_kept`); the top-up makes
    up for it, so the result has the noise of unblurred slices degraded alike. Without it the
    variance fell 15 % short under a slight lateral blur (which leaves much of the input's noise)."""
    rng = np.random.default_rng(0)
    gain, read, offset = 8.0, 12.0, 100.0
    block = offset + gain * rng.poisson(30.0, (21, 128, 128)) + rng.normal(0, read, (21, 128, 128))
    params = {
        "blur_sigma_px": 0.5,
        "halo_fraction": 0.0,
        "halo_sigma_px": 8.0,
        "attenuation": 0.8,
        "background": 116.0,
        "source_background": offset,
        "gain": gain,
        "read_noise": read,
        "offset": offset,
    }
    impulse = np.zeros(21)
    impulse[10] = 1.0
    kept = float(np.sum(ndimage.gaussian_filter1d(impulse, 1.0, truncate=8.0) ** 2))
    blurred = ndimage.gaussian_filter1d(block, 1.0, axis=0, truncate=8.0)[8:12]
    inner = (Ellipsis, slice(20, -20), slice(20, -20))
    plain = degrade(block[8:12], params, np.random.default_rng(1))[inner].var()
    topped_up = degrade(blurred, params, np.random.default_rng(1), noise_kept=kept)[inner].var()
    short = degrade(blurred, params, np.random.default_rng(1))[inner].var()
    assert topped_up == pytest.approx(plain, rel=0.03)
    assert short < 0.9 * plain


def test_make_pairs_keep_their_crops_inside_the_columns_given(small: SimulatedPlant) -> None:
    """x is written into every pixel of a stack shaped like the plant: the untouched targets show
    which columns each crop came from, with tissue centres and without."""
    est = estimate_degradation(small.observed, small.voxel_size)
    columns = np.broadcast_to(np.arange(SMALL[2], dtype=np.float64), SMALL)
    rng = np.random.default_rng(0)
    for centres in (tissue_centres(small.observed, est, 3), np.zeros((0, 2), np.int64)):
        # 96 crops: each of the 15 crop positions is missed with a chance of 0.1 %
        _, targets, _ = make_pairs(columns, est, 96, 16, 3, rng, centres, columns=(10, 40))
        assert targets.min() == 10 and targets.max() == 39
    with pytest.raises(DqlrError, match="larger than the slices"):
        make_pairs(columns, est, 1, 16, 3, rng, columns=(10, 20))


def test_record_round_trip_and_relative(estimate: DepthDegradation) -> None:
    back = DepthDegradation.from_dict(json.loads(json.dumps(estimate.to_dict())))
    for name in ("blur_sigma_px", "halo_fraction", "attenuation", "background"):
        np.testing.assert_array_equal(getattr(back, name), getattr(estimate, name))
    assert back.reference_slices == estimate.reference_slices and back.gain == estimate.gain
    assert (back.notes, back.reliable) == (estimate.notes, estimate.reliable)
    np.testing.assert_array_equal(back.blur_sigma_px_error, estimate.blur_sigma_px_error)
    same = estimate.relative(20, 20)
    assert same["blur_sigma_px"] == 0 and same["halo_fraction"] == 0 and same["attenuation"] == 1
    deep = estimate.at(SHAPE[0] - 1)
    assert deep["blur_sigma_px"] == pytest.approx(estimate.blur_sigma_px[-1])
    with pytest.raises(DqlrError):
        DepthDegradation.from_dict({"gain": 1.0})


def test_blur_only_gives_the_same_blur_and_notes(plant: SimulatedPlant, estimate: DepthDegradation) -> None:
    """The depth-aware models' conditioning path skips what the blur does not depend on; what it
    gives them must be exactly what the full estimate gives (also on float data imaged bottom-up,
    where the notes say that the blur cannot be measured)."""
    quick = estimate_degradation(plant.observed, plant.voxel_size, blur_only=True)
    assert np.array_equal(quick.blur_sigma_px, estimate.blur_sigma_px) and quick.blur_sigma_px.max() > 1
    assert quick.notes == estimate.notes and quick.reliable == estimate.reliable
    assert quick.reference_slices == estimate.reference_slices
    assert (quick.attenuation == 1).all() and not quick.halo_fraction.any()
    upside_down = (plant.observed[::-1] * 0.01).astype(np.float32)
    full, fast = (estimate_degradation(upside_down, blur_only=b) for b in (False, True))
    assert np.array_equal(full.blur_sigma_px, fast.blur_sigma_px) and full.notes == fast.notes


def test_the_estimate_on_threads_equals_the_estimate_slice_by_slice(monkeypatch) -> None:
    """The per-slice loops run on threads for speed; the numbers must not change by one bit."""
    stack = simulate_plant(shape=(16, 96, 96), seed=4).observed
    threaded = [estimate_degradation(stack, blur_only=b) for b in (False, True)]
    monkeypatch.setattr("dqlr.degradation.ops.MAX_SLICE_THREADS", 1)
    serial = [estimate_degradation(stack, blur_only=b) for b in (False, True)]
    for a, b in zip(threaded, serial, strict=True):
        for name in ("blur_sigma_px", "halo_fraction", "attenuation", "background", "gain", "read_noise"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.reference_slices == b.reference_slices and a.notes == b.notes
