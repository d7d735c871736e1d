"""Stacks the SAM simulator does not make by default: other structure, pixel sizes, focus and
orientation. The checks must say what differs, adaptation must see the stack as enhance does, and
outputs must keep what the user was told."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import zarr
from scipy.ndimage import gaussian_filter

import dqlr
from dqlr.cli import main
from dqlr.config import Config, RunOptions
from dqlr.degradation import estimate_degradation
from dqlr.inference.checks import assess, sharpest_inside, sharpness_profile
from dqlr.inference.enhance import (
    UNFAMILIAR_RATIO,
    enhanced_slices,
    fit_stack_normalization,
    plan_enhancement,
)
from dqlr.model.checkpoint import load_model, read_checkpoint
from dqlr.model.familiarity import METRIC, quantization_error
from dqlr.normalize import normalize
from dqlr.simulation import image_emission, simulate_plant
from dqlr.training.batches import pair_sampler
from tests.conftest import tiny_config
from tests.test_checks import wall_grid
from tests.test_train import save_tiny_model

QUIET = RunOptions(progress=False, device="cpu")


def grid_emission(shape: tuple[int, int, int], period: int = 20) -> np.ndarray:
    """A regular wall grid (walls every `period` pixels) with faint floors: not SAM cells."""
    emission = np.full(shape, 0.04, np.float32)
    emission[:, ::period, :] = emission[:, :, ::period] = 1.0
    emission[::5] = np.maximum(emission[::5], 0.3)
    return emission


def notes_of(function, *args, **kwargs) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dqlr.DqlrWarning)
        result = function(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, dqlr.DqlrWarning)]


# ----------------------------------------------------------------------------- simulator cases


def test_image_emission_degrades_away_from_the_focus_it_is_given() -> None:
    shape = (9, 64, 64)
    depth = np.abs(np.arange(9) - 4.0)
    stack = image_emission(grid_emission(shape), (1.0, 0.25, 0.25), seed=1, depth_um=depth)
    blur = stack.truth["psf_xy_um"]
    assert stack.observed.shape == shape and stack.observed.dtype == np.uint16
    assert np.argmin(blur) == 4 and blur[0] == blur[-1] == blur.max()
    assert (stack.labels == 0).all()
    with pytest.raises(dqlr.DqlrError, match="emission"):
        image_emission(-grid_emission(shape))


def test_simulated_cells_can_be_larger_and_in_focus_inside_the_stack() -> None:
    small = simulate_plant(shape=(12, 96, 96), seed=2)
    large = simulate_plant(shape=(12, 96, 96), seed=2, cell_size=3.0)
    assert len(np.unique(large.labels)) < len(np.unique(small.labels)) / 3
    focused = simulate_plant(shape=(12, 64, 64), seed=2, focus_um=6.0)
    assert np.argmin(focused.truth["psf_xy_um"]) == 6


# ----------------------------------------------------------------------------- checks


def test_the_sharp_end_is_measured_at_the_models_pixel_size() -> None:
    """At 0.1 µm pixels the raw frequency bands see mostly noise: a top-down plant looked bottom-sharp."""
    fine = simulate_plant(shape=(24, 256, 256), voxel_size=(1.0, 0.1, 0.1), seed=7).observed
    model = (1.0, 0.25, 0.25)
    assert not assess(fine, "auto", (1.0, 0.1, 0.1), model).flip
    assert assess(fine[::-1], "auto", (1.0, 0.1, 0.1), model).flip
    assert not assess(fine, "auto", (1.0, 0.1, 0.1), model, match_pixel_size=False).flip


class _Counter:
    """Stands in for a progress bar."""

    def __init__(self) -> None:
        self.n = 0
        self.steps: list[int] = []

    def update(self, k: int) -> None:
        self.n += k
        self.steps.append(k)


def test_a_focus_inside_the_stack_is_found_and_each_side_enhanced_from_it() -> None:
    middle = simulate_plant(shape=(24, 128, 128), seed=8, focus_um=12.0)
    top_down = simulate_plant(shape=(24, 128, 128), seed=8).observed
    inside = sharpest_inside(*sharpness_profile(middle.observed))
    assert inside is not None and 8 <= inside <= 16
    assert sharpest_inside(*sharpness_profile(top_down)) is None
    assert sharpest_inside(*sharpness_profile(top_down[::-1])) is None
    findings = assess(middle.observed)
    assert findings.focus == inside and any(
        "sharpest slices are inside this stack" in n for n in findings.notes
    )
    assert assess(middle.observed, sharp_end="top").focus is None

    model = load_model("paper")
    plan = plan_enhancement(middle.observed, model, dqlr.EnhanceOptions())
    lower, upper = plan.views
    assert [lower.source_index(0), lower.source_index(lower.shape[0] - 1)] == [inside, 23]
    assert [upper.source_index(0), upper.source_index(upper.shape[0] - 1)] == [inside, 0]
    counter = _Counter()
    order = [z for z, _, _ in enhanced_slices(plan, model, dqlr.EnhanceOptions(), counter)]  # type: ignore[arg-type]
    assert sorted(order) == list(range(24))  # every slice once, the focus from the lower part
    assert counter.n == 24  # and counted once on a progress bar
    assert order[: 24 - inside] == list(range(inside, 24)) and order[24 - inside :] == list(
        range(inside - 1, -1, -1)
    )
    # both directions: each pass is half of every slice's work, the bar still counts whole slices
    both = _Counter()
    both_order = [
        z
        for z, _, _ in enhanced_slices(plan, model, dqlr.EnhanceOptions(both_directions=True), both)  # type: ignore[arg-type]
    ]
    assert both_order == order
    assert both.n == 24 and all(type(k) is int for k in both.steps)


def test_unfamiliar_structure_is_measured_and_named() -> None:
    model = load_model(None)
    reference = model.meta["metrics"][METRIC]
    plant = simulate_plant(shape=(12, 192, 192), seed=21).observed
    grid = image_emission(grid_emission((12, 192, 192)), seed=21).observed

    def ratio(stack: np.ndarray) -> float:
        error = quantization_error(model.network, stack, fit_stack_normalization(stack, model))
        assert error is not None
        return error / reference

    assert ratio(plant) < UNFAMILIAR_RATIO < ratio(grid)
    _, notes = notes_of(dqlr.enhance, grid, model, voxel_size=(1.0, 0.25, 0.25))
    assert any("unlike the model's training data" in n for n in notes)
    _, notes = notes_of(dqlr.enhance, plant, model, voxel_size=(1.0, 0.25, 0.25))
    assert not any("unlike the model's training data" in n for n in notes)
    assert (
        quantization_error(load_model("noquant").network, plant, fit_stack_normalization(plant, model))
        is None
    )


def test_training_records_the_familiarity_reference(tmp_path) -> None:
    stack = dqlr.simulate(shape=(12, 64, 64), seed=44).observed
    result = dqlr.train([stack], tmp_path / "run", tiny_config(), run=QUIET)
    metrics = read_checkpoint(result.best)["metrics"]
    assert 0 < metrics[METRIC] < 1


# ----------------------------------------------------------------------------- adaptation


def test_pairs_come_only_from_stacks_whose_blur_was_measured() -> None:
    config = Config().with_overrides({"mode": "depth-aware"})
    plant = simulate_plant(shape=(16, 128, 128), seed=5).observed
    grid = wall_grid(12, 96)
    norms = [fit_stack_normalization(s, load_model(None)) for s in (plant, grid)]
    estimates: dict = {}
    assert pair_sampler([grid], norms[1:], config, estimates) is None
    both = pair_sampler([plant, grid], norms, config, estimates)
    assert both is not None and len(both.stacks) == 1 and both.stacks[0] is plant
    assert set(estimates) == {(id(plant), False), (id(grid), False)}  # each estimated once


@pytest.mark.parametrize("given", ["array", "stack"])
def test_adapt_sees_the_stack_as_enhance_does(tmp_path, given) -> None:
    """A bottom-up stack at 0.125 µm pixels: adapt trains on it turned over and at the model's 0.25 µm.
    Given as an array the voxel size comes from the options; as a read Stack, with the stack."""
    init = save_tiny_model(tmp_path / "tiny.pt", tiny_config())
    state = read_checkpoint(init.path)
    state["voxel_size"] = [1.0, 0.25, 0.25]
    torch_path = tmp_path / "tiny_025.pt"
    import torch

    torch.save(state, torch_path)
    fine = simulate_plant(shape=(16, 192, 192), voxel_size=(1.0, 0.125, 0.125), seed=9).observed
    options = dqlr.EnhanceOptions(voxel_size=(1.0, 0.125, 0.125))
    stack: object = fine[::-1]
    if given == "stack":
        stack = dqlr.read_stack(
            dqlr.write_stack(tmp_path / "fine.tif", fine[::-1], voxel_size=(1.0, 0.125, 0.125))
        )
        options = dqlr.EnhanceOptions()
    result, notes = notes_of(
        dqlr.adapt,
        stack,
        tmp_path / "adapted",
        str(torch_path),
        minutes=0.03,
        run=QUIET,
        options=options,
    )
    assert any("sharp end of this stack is the bottom" in n for n in notes)
    assert any("resampled to 0.25 µm" in n for n in notes)
    adapted = read_checkpoint(result.best)
    assert adapted["voxel_size"] == [1.0, 0.25, 0.25]
    stacks = adapted["normalization"]["training_stacks"]
    assert len(stacks) == 1 and "as the model sees it" in stacks[0]["name"]
    # normalised as enhance normalises it: the whole stack as given, not the resampled view
    whole = fit_stack_normalization(fine, init).to_dict()
    assert {k: stacks[0][k] for k in whole} == whole


# ----------------------------------------------------------------------------- what the user was told


@pytest.mark.parametrize("suffix", [".tif", ".ome.tif", ".zarr"])
def test_outputs_record_the_model_and_the_notes(tmp_path, suffix) -> None:
    stack = simulate_plant(shape=(12, 64, 64), seed=10).observed
    source = dqlr.write_stack(tmp_path / "in.tif", stack, voxel_size=(1.0, 0.125, 0.125))
    output = tmp_path / f"out{suffix}"
    assert main(["enhance", str(source), "-o", str(output), "--mode", "paper"]) == 0
    info = dqlr.read_stack(output).info
    assert info is not None and info.startswith("enhanced by dqlr ") and "dqlr_paper.pt" in info
    assert "note: pixels are 0.125 µm, the model was trained on 0.25 µm" in info
    if suffix == ".tif":
        with tifffile.TiffFile(output) as tif:
            assert tif.imagej_metadata["Info"] == info
    elif suffix == ".zarr":
        assert zarr.open_group(str(output), mode="r").attrs["dqlr"]["info"] == info
    report = tmp_path / "report.html"
    assert main(["report", str(source), "--result", f"dqlr={output}", "--output", str(report)]) == 0
    assert "How the results were made" in report.read_text() and "pixels are 0.125 µm" in report.read_text()


def test_cli_prints_api_warnings_as_one_line_notes(tmp_path, capsys) -> None:
    stack = simulate_plant(shape=(12, 64, 64), seed=11).observed
    source = dqlr.write_stack(tmp_path / "in.tif", stack, voxel_size=(1.0, 0.125, 0.125))
    code = main(
        [
            "enhance",
            str(source),
            "-o",
            str(tmp_path / "out.tif"),
            "--mode",
            "paper",
            "--adapt",
            "--adapt-minutes",
            "0.03",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "dqlr: note: " in err and "pixels are 0.125 µm" in err
    assert "DqlrWarning" not in err and "warnings.warn" not in err


# ----------------------------------------------------------------------------- the guard


def test_explains_accepts_a_sharper_result_and_refuses_an_erased_one() -> None:
    from scipy import ndimage

    from dqlr.inference.enhance import explains

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    blob = ((yy - 90) ** 2 + (xx - 100) ** 2 < 15**2).astype(np.float64)
    observed = ndimage.gaussian_filter(blob, 3) * 0.3 + rng.normal(0, 0.1, blob.shape)
    assert explains(blob, observed)  # sharper, brighter, but the same structure
    dots = np.zeros_like(blob)
    dots[::8, ::8] = 1.0  # the structure erased, a code pattern drawn instead
    assert not explains(dots, observed)
    assert explains(dots, np.zeros_like(observed))  # nothing to explain


def test_the_guard_keeps_the_faint_dome_cap_of_a_near_empty_top_slice() -> None:
    """The demo plant's top slice (seed 2026): the model erased the cap and drew a dot pattern."""
    plant = simulate_plant(shape=(16, 256, 256), seed=2026)
    model = load_model(None)
    guarded, notes = notes_of(dqlr.enhance, plant.observed, model, voxel_size=(1.0, 0.25, 0.25))
    bare = dqlr.enhance(plant.observed, model, voxel_size=(1.0, 0.25, 0.25), guard=False)
    from dqlr.evaluation.metrics import psnr_affine

    top = [psnr_affine(s[0], plant.clean[0]) for s in (plant.observed, bare, guarded)]
    assert top[2] > top[0] + 1.0 and top[2] > top[1] + 1.0
    assert any("plain smoothing of the input" in n and "z = 0" in n for n in notes)
    assert np.array_equal(guarded[4:], bare[4:])  # slices with structure are the model's


def test_saturation_is_named_and_photon_counts_are_not() -> None:
    plant = simulate_plant(shape=(12, 96, 96), seed=12).observed
    assert not [n for n in assess(plant).notes if "saturated" in n]
    clipped = np.minimum(plant.astype(np.uint32) * 200, 65535).astype(np.uint16)
    assert any("saturated" in n for n in assess(clipped).notes)
    counts = np.random.default_rng(0).poisson(3, (10, 64, 64)).astype(np.uint16)  # few levels, nothing lost
    assert not [n for n in assess(counts).notes if "saturated" in n or "grey levels" in n]


def test_top_down_stacks_with_a_near_empty_cap_are_not_split() -> None:
    """The cap slices rise in sharpness before the usual fall (up to 3.3x at 96 px slices)."""
    for seed in (3, 6, 8):
        stack = simulate_plant(shape=(32, 96, 96), seed=seed).observed
        assert assess(stack, "auto", (1.0, 0.25, 0.25), (1.0, 0.25, 0.25)).focus is None


def test_coarse_pixels_still_give_a_sharpness_profile() -> None:
    """At 1 µm pixels the model's mid band lies above the noise band: the slice's own bands are used."""
    coarse = simulate_plant(shape=(24, 96, 96), voxel_size=(2.0, 1.0, 1.0), seed=4).observed
    sharpness, _ = sharpness_profile(coarse, 4.0)
    assert np.isfinite(sharpness).all()
    assert sharpness.max() > 0


def test_the_part_above_a_focus_is_adapted_on_blurred_pairs_alone(tmp_path, monkeypatch) -> None:
    """Above a focus inside the stack, light crosses less tissue: no halo, no loss of signal grows
    there, so that part's pairs are blur and noise only; the part below keeps the full estimate."""
    middle = simulate_plant(shape=(24, 128, 128), seed=8, focus_um=12.0).observed
    given: list = []
    monkeypatch.setattr("dqlr.training.adapt.adapt", lambda stacks, *a, **k: given.extend(stacks))
    dqlr.adapt(middle, tmp_path / "adapted", minutes=1, run=QUIET)
    assert [s.defocus_only for s in given] == [False, True]  # below the focus, then above it
    config = load_model(None).config
    full = pair_sampler([s.data for s in given], [s.norm for s in given], config)
    alone = pair_sampler([s.data for s in given], [s.norm for s in given], config, defocus_only=[False, True])
    assert full is not None and alone is not None
    above_full, above_alone = full.degradations[1], alone.degradations[1]
    assert above_full.halo_fraction.max() > 0.1 and above_full.attenuation.min() < 0.9  # what was measured
    assert not above_alone.halo_fraction.any() and np.all(above_alone.attenuation == 1)
    np.testing.assert_array_equal(above_alone.blur_sigma_px, above_full.blur_sigma_px)
    below_full, below_alone = full.degradations[0], alone.degradations[0]
    np.testing.assert_array_equal(below_alone.halo_fraction, below_full.halo_fraction)


def test_the_blur_of_a_resized_stack_is_measured_at_its_own_pixels() -> None:
    """Enlarged 2x for the model (0.5 µm pixels), the slices lose the fine band the depth estimate
    reads: measured on the view it found no blur at any depth. Measured at the stack's own pixels
    and scaled by the zoom, the deep slices get the condition they need."""
    coarse = simulate_plant(shape=(32, 128, 128), voxel_size=(1.0, 0.5, 0.5), seed=7).observed
    model = load_model(None)
    plan = plan_enhancement(coarse, model, dqlr.EnhanceOptions(), (1.0, 0.5, 0.5))
    (view,), (levels,) = plan.views, plan.levels
    assert view.zoom == 2.0 and levels is not None
    own = estimate_degradation(
        coarse, reference_fraction=model.config.depth_aware.reference_fraction, blur_only=True
    )
    expected = np.asarray(own.blur_sigma_px) * 2.0 / model.config.depth_aware.condition_scale_px
    np.testing.assert_allclose(levels, expected, rtol=1e-5)
    assert levels[-8:].min() > 0.3  # the deepest quarter is conditioned as blurred


def test_adapt_makes_the_pairs_of_a_resized_stack_at_its_own_pixels(tmp_path, monkeypatch) -> None:
    """Degraded after a 2x enlargement, pairs got noise white at the model's pixels, unlike the
    real deep slices' (enlarged with them) and no depth condition. Degraded at the stack's own
    pixels and enlarged as enhance enlarges, their fine grain has the deep slices' texture.

    The texture is the correlation of neighbouring pixels in what a 1.5-pixel smoothing removes.
    Measured over seeds 0-5: deep slices 0.61, pairs at the own pixels 0.635-0.655, enlarged pairs
    0.740-0.754. (The grain's strength, its standard deviation, scattered from -3 % to -14 % of the
    deep slices' over those seeds for both kinds of pairs: it could not tell them apart.)"""
    coarse = simulate_plant(shape=(32, 128, 128), voxel_size=(1.0, 0.5, 0.5), seed=7).observed
    given: list = []
    monkeypatch.setattr("dqlr.training.adapt.adapt", lambda stacks, *a, **k: given.extend(stacks))
    dqlr.adapt(
        coarse,
        tmp_path / "adapted",
        minutes=1,
        run=QUIET,
        options=dqlr.EnhanceOptions(voxel_size=(1.0, 0.5, 0.5)),
    )
    (stack,) = given
    assert stack.zoom == 2.0 and stack.source.shape == (32, 128, 128) and stack.data.shape == (32, 256, 256)
    config = load_model(None).config

    def grain_texture(a: np.ndarray) -> float:
        fine = a - gaussian_filter(a, (0,) * (a.ndim - 2) + (1.5, 1.5))
        fine = fine - fine.mean(axis=(-2, -1), keepdims=True)
        return float((fine[..., 1:] * fine[..., :-1]).mean() / (fine * fine).mean())

    deep = grain_texture(normalize(stack.data[-8:], stack.norm))
    made = {}
    for name, resized in (("own pixels", [stack.resized]), ("enlarged", None)):
        sampler = pair_sampler([stack.data], [stack.norm], config, resized=resized)
        assert sampler is not None
        inputs, targets, levels = sampler.sample(32, np.random.default_rng(0))
        assert (
            inputs.shape
            == targets.shape
            == (32, config.model.predict_next + 2, config.data.crop, config.data.crop)
        )
        made[name] = (grain_texture(inputs.numpy()), float(levels.max()))
    assert made["own pixels"][1] > 0.3 and made["enlarged"][1] == 0.0  # the condition the deep slices get
    assert abs(made["own pixels"][0] - deep) < 0.07
    assert made["enlarged"][0] - deep > 0.1
