import numpy as np
import pytest
import torch

from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError, DqlrWarning
from dqlr.inference.enhance import enhance, enhance_file, enhance_files, iter_enhanced
from dqlr.inference.tiling import Blender, tile_grid, tile_spans
from dqlr.io import read_stack, write_stack
from dqlr.model.checkpoint import LoadedModel
from dqlr.normalize import fit_normalization
from tests.conftest import save_tiny_model, tiny_config


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("model"), predict_next=2)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    from dqlr.simulation import simulate_plant

    return simulate_plant(shape=(6, 70, 90), seed=3).observed


def test_tile_spans_cover_and_align() -> None:
    for length in (50, 96, 97, 200, 1000):
        spans = tile_spans(length, 96, 32, align=4)
        covered = np.zeros(length, bool)
        for start, stop in spans:
            covered[start:stop] = True
            assert start % 4 == 0
        assert covered.all()
        for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
            assert stop - start >= 32  # overlaps at least as asked


def test_blender_reproduces_a_constant_slice() -> None:
    blender = Blender((100, 130), overlap=24)
    for region in tile_grid((100, 130), 48, 24, 4):
        blender.add(
            region, np.full((region[0].stop - region[0].start, region[1].stop - region[1].start), 3.0)
        )
    assert np.allclose(blender.result(), 3.0)


def test_tiled_equals_untiled(model_file, stack) -> None:
    from dqlr.model.checkpoint import load_model

    model = load_model(model_file)
    big = np.concatenate([stack, stack[:, ::-1]], axis=2)[:, :, :160]  # 70 x 160 slices
    norm = fit_normalization(big)
    whole = [s for s, _, _ in iter_enhanced(big, model, norm, EnhanceOptions(tile=512))]
    tiled = [s for s, _, _ in iter_enhanced(big, model, norm, EnhanceOptions(tile=48, overlap=24))]
    assert len(tile_grid((70, 160), 48, 24, 4)) > 4
    difference = max(float(np.abs(a - b).max()) for a, b in zip(whole, tiled, strict=True))
    spread = float(np.ptp(np.stack(whole)))
    assert difference < 0.02 * spread


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_enhance_keeps_shape_and_dtype(model_file, stack, dtype) -> None:
    data = stack.astype(dtype) if dtype != "uint8" else (stack // 256).astype("uint8")
    data = data[:, :37, :51]  # odd slice size
    result = enhance(data, model_file, device="cpu")
    assert result.shape == data.shape and result.dtype == data.dtype
    assert np.isfinite(result.astype(np.float64)).all()


@pytest.mark.parametrize("suffix", [".tif", ".ome.tif", ".zarr"])
def test_enhance_file_keeps_format_dtype_and_voxel_size(model_file, stack, tmp_path, suffix) -> None:
    source = tmp_path / f"in{suffix}"
    write_stack(source, stack, voxel_size=(0.8, 0.21, 0.21))
    before = source.stat().st_mtime_ns
    target = tmp_path / f"out{suffix}"
    options = EnhanceOptions(device="cpu", predict_next=1)
    paths = enhance_file(source, target, model_file, options)
    out = read_stack(target)
    assert out.data.shape == stack.shape and out.data.dtype == stack.dtype
    assert out.voxel_size == pytest.approx((0.8, 0.21, 0.21), rel=1e-4)
    assert len(paths) == 2 and paths[1].name.startswith("out.next1")
    assert read_stack(paths[1]).data.shape == stack.shape
    assert source.stat().st_mtime_ns == before


def test_output_exists_is_refused_and_input_never_overwritten(model_file, stack, tmp_path) -> None:
    source = tmp_path / "in.tif"
    write_stack(source, stack)
    original = source.read_bytes()
    target = tmp_path / "out.tif"
    target.write_bytes(b"keep me")
    with pytest.raises(DqlrError, match="--force"):
        enhance_file(source, target, model_file)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(DqlrError):
        enhance_file(source, source, model_file, force=True)
    assert source.read_bytes() == original


def test_bad_inputs_give_clear_errors_and_write_nothing(model_file, tmp_path) -> None:
    import tifffile

    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((32, 32), np.uint16))
    with pytest.raises(DqlrError, match="2-D"):
        enhance_file(flat, tmp_path / "a.tif", model_file)
    wrong = tmp_path / "wrong.pt"
    wrong.write_text("hello")
    source = tmp_path / "ok.tif"
    write_stack(source, np.zeros((4, 16, 16), np.uint16))
    with pytest.raises(DqlrError, match="not a dqlr model"):
        enhance_file(source, tmp_path / "b.tif", str(wrong))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif", "ok.tif", "wrong.pt"]


def test_the_guards_notes_are_stored_in_the_output(model_file, stack, tmp_path) -> None:
    """The untrained model explains no slice: the guard replaces them all, which is known only
    after the last slice, and still recorded in the output's metadata."""
    source = write_stack(tmp_path / "in.tif", stack)
    with pytest.warns(DqlrWarning, match="6 of 6 slices"):
        enhance_file(source, tmp_path / "out.tif", model_file, EnhanceOptions(device="cpu"))
    info = read_stack(tmp_path / "out.tif").info
    assert info is not None and "note: 6 of 6 slices (z = 0, 1, 2, 3, 4, 5) are plain smoothing" in info


def test_several_files_one_failing(model_file, stack, tmp_path) -> None:
    folder = tmp_path / "in"
    write_stack(folder / "a.tif", stack)
    write_stack(folder / "c.tif", stack)
    (folder / "b.tif").write_bytes(b"garbage")
    outcomes = enhance_files(
        [folder], tmp_path / "out", model_file, EnhanceOptions(device="cpu"), progress=False
    )
    assert [o.input.name for o in outcomes] == ["a.tif", "b.tif", "c.tif"]
    assert outcomes[1].error and "b.tif" in outcomes[1].error
    assert (tmp_path / "out" / "a.tif").is_file() and (tmp_path / "out" / "c.tif").is_file()
    assert not (tmp_path / "out" / "b.tif").exists()


def test_a_folder_gives_raw_stacks_only_and_names_what_it_skipped(tmp_path) -> None:
    from dqlr.errors import DqlrWarning
    from dqlr.inference.enhance import expand_inputs

    for name in ("plant00_observed.tif", "plant00_clean.tif", "plant00_labels.tif", "out.next1.tif", "x.tif"):
        write_stack(tmp_path / name, np.zeros((3, 16, 16), np.uint16))
    (tmp_path / "notes.txt").write_text("not a stack")
    with pytest.warns(DqlrWarning, match=r"skipped 3 file\(s\).*plant00_clean.tif, plant00_labels.tif"):
        files = expand_inputs([tmp_path])
    assert [f.name for f in files] == ["plant00_observed.tif", "x.tif"]
    assert expand_inputs([tmp_path / "plant00_clean.tif"]) == [tmp_path / "plant00_clean.tif"]  # named: taken


def test_loaded_model_object_is_accepted(model_file, stack) -> None:
    from dqlr.model.checkpoint import load_model

    loaded = load_model(model_file)
    assert isinstance(loaded, LoadedModel)
    assert np.array_equal(enhance(stack, loaded), enhance(stack, model_file))


class _OutOfMemoryAbove:
    """Wraps a network's decode so that, after `allowed` successful calls, batches of more than
    `limit` latent pixels raise CUDA's out-of-memory error, as a small GPU would."""

    def __init__(self, network, limit: int, allowed: int = 0) -> None:
        self.decode, self.limit, self.allowed = network.decode, limit, allowed
        self.calls, self.raised = 0, 0

    def __call__(self, codes):
        if self.calls >= self.allowed and codes.shape[0] * codes.shape[-2] * codes.shape[-1] > self.limit:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.calls += 1
        return self.decode(codes)


@pytest.fixture(scope="module")
def conditioned_model():
    """Depth-aware and unquantized, so that both the latents of the slice above and its level
    show in the output (an untrained codebook would quantize small differences away)."""
    from dqlr.model.checkpoint import LoadedModel, build_network

    torch.manual_seed(1)
    config = tiny_config(predict_next=1, quantize=False).with_overrides({"mode": "depth-aware"})
    network = build_network(config).eval()
    return LoadedModel(network=network, config=config, meta={}, path="in-memory")


@pytest.mark.parametrize("allowed", [0, 3])
def test_out_of_memory_shrinks_tiles_and_goes_on(conditioned_model, stack, allowed) -> None:
    """From the first slice or mid-stack (after 3 whole-slice calls), running out of memory halves
    the batch, then the tile (overlap at most a quarter tile), rebuilds the latents of the slice
    above on the new tiles and goes on: slices before the switch equal a run with large tiles,
    those after it a run with 64-px tiles from the start."""
    model = conditioned_model
    big = np.concatenate([stack, stack[:, ::-1]], axis=2)[:, :, :160]  # 70 x 160 slices
    norm = fit_normalization(big)
    levels = np.linspace(0.0, 1.0, big.shape[0]).astype(np.float32)

    def run(options):
        return [s for s, _, _ in iter_enhanced(big, model, norm, options, levels=levels)]

    # the failure is injected into the torch network; the retry loop is the same for every engine
    large = run(EnhanceOptions(tile=512, overlap=32, engine="torch"))
    small = run(EnhanceOptions(tile=64, overlap=16, engine="torch"))
    guard = _OutOfMemoryAbove(model.network, limit=17 * 17, allowed=allowed)
    model.network.decode = guard
    try:
        shrunk = run(EnhanceOptions(tile=512, overlap=32, engine="torch"))
    finally:
        del model.network.decode
    assert guard.raised >= 3  # batch, then tile 160 -> 80 -> 64
    assert len(shrunk) == big.shape[0]
    for z, result in enumerate(shrunk):
        expected = large[z] if z < allowed else small[z]
        assert np.abs(result - expected).max() < 1e-5, z
    assert np.abs(large[4] - small[4]).max() > 1e-3  # the two references do differ


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(model_file, stack) -> None:
    from dqlr.model.checkpoint import load_model

    model = load_model(model_file)
    model.network.decode = _OutOfMemoryAbove(model.network, limit=0)
    with pytest.raises(DqlrError, match="out of memory even with 64-px tiles one at a time"):
        options = EnhanceOptions(tile=256, engine="torch")
        list(iter_enhanced(stack, model, fit_normalization(stack), options))


def test_other_runtime_errors_are_not_taken_for_out_of_memory() -> None:
    from dqlr.inference.enhance import is_out_of_memory

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_progress_callable_sees_every_slice_and_can_stop_the_run(model_file, stack) -> None:
    """A GUI follows the run slice by slice and cancels it by raising from the callable."""
    calls: list[tuple[int, int]] = []
    result = enhance(stack, model_file, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(z + 1, len(stack)) for z in range(len(stack))]
    assert np.array_equal(result, enhance(stack, model_file))  # the hook changes nothing

    class CancelledError(Exception):
        pass

    def cancel_after_two(done: int, total: int) -> None:
        if done == 2:
            raise CancelledError

    with pytest.raises(CancelledError):
        enhance(stack, model_file, progress=cancel_after_two)


def test_both_directions_lets_each_slice_see_the_slice_below(conditioned_model, stack) -> None:
    """Top-down, a slice's result depends on it and the slice above only; with both_directions it
    also depends on the slice below, and it is the mean of the top-down pass and the pass over the
    stack turned over (each slice keeping its own depth level)."""
    data = stack.astype(np.float32)
    changed = data.copy()
    changed[4] = np.roll(changed[4], 20, axis=1)  # the same values: the stack's normalisation stays
    quiet = {"guard": False, "sharp_end": "top", "voxel_size": (1.0, 0.25, 0.25)}
    one = [enhance(d, conditioned_model, **quiet) for d in (data, changed)]
    both = [enhance(d, conditioned_model, both_directions=True, **quiet) for d in (data, changed)]
    scale = float(np.abs(one[0]).max())
    # slice 3 never sees slice 4 top-down (float rounding of other computations aside)
    np.testing.assert_allclose(one[0][:4], one[1][:4], atol=1e-5 * scale)
    # an untrained network's context moves its output little (measured: 0.024 of 82; rounding 3e-5)
    assert np.abs(both[0][3] - both[1][3]).max() > 1e-4 * scale
    np.testing.assert_allclose(both[0][:3], both[1][:3], atol=1e-5 * scale)  # two slices away

    # the pass from below is the top-down pass over the stack turned over: in the paper mode (no
    # depth levels to keep) both directions give the mean of the two
    from dqlr.model.checkpoint import build_network

    torch.manual_seed(2)
    config = tiny_config(predict_next=1, quantize=False)
    paper = LoadedModel(network=build_network(config).eval(), config=config, meta={}, path="in-memory")
    down = enhance(data, paper, **quiet)
    up = enhance(np.ascontiguousarray(data[::-1]), paper, **quiet)[::-1]
    mean = enhance(data, paper, both_directions=True, **quiet)
    np.testing.assert_allclose(mean, (down + up) / 2, rtol=1e-5, atol=1e-4 * np.abs(mean).max())
