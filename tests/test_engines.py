"""ONNX Runtime runs the same network as torch: equal outputs, the right engine chosen, shipped
graphs that match their weights (and are ignored when they do not)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config

import dqlr
from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError
from dqlr.inference.engines import OnnxEngine, TorchEngine, pad_tiles, pick_engine
from dqlr.inference.enhance import iter_enhanced, model_quantization_error
from dqlr.io import write_stack
from dqlr.model import pad_to_multiple
from dqlr.model.checkpoint import (
    SHIPPED,
    LoadedModel,
    build_network,
    describe_weights,
    load_model,
    read_checkpoint,
    save_checkpoint,
    shipped_model_path,
)
from dqlr.model.familiarity import quantization_error
from dqlr.model.graph import shipped_graph
from dqlr.normalize import fit_normalization
from dqlr.simulation import simulate_plant


def _model(mode: str, quantize: bool = True) -> LoadedModel:
    torch.manual_seed(2)
    config = tiny_config(quantize=quantize).with_overrides({"mode": mode})
    return LoadedModel(build_network(config).eval(), config, path=None)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    # Not a shape the simulator's defaults make, and flipped: odd sizes need padding in both engines.
    return simulate_plant(shape=(5, 70, 90), seed=11).observed[::-1].astype(np.float32)


@pytest.mark.parametrize("mode", ["paper", "depth-aware"])
def test_onnx_engine_equals_torch_over_a_tiled_stack(mode, stack) -> None:
    model = _model(mode, quantize=False)  # no code flips between engines: compare every pixel
    norm = fit_normalization(stack)
    levels = np.linspace(0.0, 1.0, len(stack)).astype(np.float32) if mode == "depth-aware" else None

    def run(engine: str) -> np.ndarray:
        options = EnhanceOptions(tile=48, overlap=16, engine=engine)
        return np.stack([s for s, _, _ in iter_enhanced(stack, model, norm, options, levels=levels)])

    torch_result, onnx_result = run("torch"), run("onnx")
    assert onnx_result.shape == stack.shape
    assert np.abs(onnx_result - torch_result).max() < 1e-4 * float(np.ptp(torch_result))
    assert np.ptp(onnx_result) > 0  # a real output, not zeros on both sides


def test_quantized_engines_agree_but_for_rare_code_flips(stack) -> None:
    """Floating-point order can move a code across the boundary between two dictionary entries."""
    model = _model("paper")
    norm = fit_normalization(stack)
    results = [
        np.stack([s for s, _, _ in iter_enhanced(stack, model, norm, EnhanceOptions(engine=e))])
        for e in ("torch", "onnx")
    ]
    close = np.isclose(results[0], results[1], atol=1e-4 * float(np.ptp(results[0])))
    assert close.mean() > 0.99


def test_pad_tiles_matches_the_networks_padding() -> None:
    tiles = np.random.default_rng(0).random((2, 13, 6)).astype(np.float32)
    for multiple in (4, 8):  # reflect, then edge where the tile is smaller than the padding
        expected = pad_to_multiple(torch.from_numpy(tiles)[:, None], multiple)[0][:, 0].numpy()
        assert np.array_equal(pad_tiles(tiles, multiple), expected)


def test_engine_choice() -> None:
    model = _model("paper")
    assert isinstance(pick_engine(model, "auto", 0), OnnxEngine)
    assert isinstance(pick_engine(model, "torch", 0), TorchEngine)
    assert isinstance(pick_engine(model, "auto", 2), TorchEngine)  # predictions come from torch
    with pytest.raises(DqlrError, match="--engine onnx cannot run here: predictions of next slices"):
        pick_engine(model, "onnx", 2)
    model.config.model.initial_state = "random"
    assert isinstance(pick_engine(model, "auto", 0), TorchEngine)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_graphs_match_their_weights(name) -> None:
    model = load_model(name)
    graph = shipped_graph(model.path, model.meta["sha256"])
    assert graph is not None, "run scripts/export_shipped_graphs.py after changing a shipped model"
    assert model.step_graph() == graph
    tiles = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    level = 0.5 if model.config.conditioned else None
    expected, _ = TorchEngine(model).step(tiles, level, [None, None])
    got, latents = OnnxEngine(model).step(tiles, level, [None, None])
    assert latents[0].shape == (model.config.model.latent_channels, 16, 16)
    assert np.isclose(got, expected, atol=1e-4).mean() > 0.99


def test_a_graph_is_not_used_for_other_weights(tmp_path) -> None:
    """A model file edited after its graph was made gets a fresh graph, not the stale one."""
    model = load_model("paper")
    state = {"config": model.config.to_dict(), "model": model.network.state_dict()}
    with torch.no_grad():
        state["model"]["generator.net.0.bias"] += 1.0
    path = save_checkpoint(tmp_path / "dqlr_paper.pt", state)
    path.with_suffix(".onnx").write_bytes(model.step_graph())  # the original weights' graph
    edited = load_model(path)
    assert shipped_graph(path, edited.meta["sha256"]) is None
    tiles = np.random.default_rng(2).random((1, 64, 64)).astype(np.float32)
    expected, _ = TorchEngine(edited).step(tiles, None, [None])
    got, _ = OnnxEngine(edited).step(tiles, None, [None])
    assert np.isclose(got, expected, atol=1e-4).mean() > 0.99


class _OrtAllocationError(Exception):
    """Stands in for ONNX Runtime's error type, which is not a RuntimeError."""


def test_onnx_runtime_out_of_memory_shrinks_tiles_too(stack, monkeypatch) -> None:
    model = _model("paper", quantize=False)
    norm = fit_normalization(stack)
    run = OnnxEngine._run

    def small_only(self, tiles, level, context):
        if tiles.shape[-1] * tiles.shape[-2] * len(tiles) > 72 * 72:  # more than one 64-px tile
            raise _OrtAllocationError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"
            )
        return run(self, tiles, level, context)

    expected = [s for s, _, _ in iter_enhanced(stack, model, norm, EnhanceOptions(tile=64, overlap=16))]
    monkeypatch.setattr(OnnxEngine, "_run", small_only)
    shrunk = [s for s, _, _ in iter_enhanced(stack, model, norm, EnhanceOptions(tile=512, overlap=16))]
    assert len(shrunk) == len(stack)
    assert max(float(np.abs(a - b).max()) for a, b in zip(shrunk, expected, strict=True)) < 1e-5


def test_public_api_gives_the_same_with_either_engine_on_a_hand_made_stack() -> None:
    """A float32 wall grid drawn by hand at 0.5 µm pixels (resampled to the model's 0.25 µm and
    back): the default (ONNX Runtime) and torch give the same stack, in the input's dtype."""
    import dqlr

    side = np.arange(96)
    walls = ((side[:, None] % 12 < 2) | (side[None, :] % 12 < 2)).astype(np.float32)
    rng = np.random.default_rng(3)
    stack = np.stack([walls * (1.0 - 0.1 * z) + rng.normal(0, 0.05, walls.shape) for z in range(6)])
    stack = stack.astype(np.float32)
    with pytest.warns(dqlr.DqlrWarning):
        default = dqlr.enhance(stack, "paper", voxel_size=(1.0, 0.5, 0.5), guard=False)
        with_torch = dqlr.enhance(stack, "paper", voxel_size=(1.0, 0.5, 0.5), guard=False, engine="torch")
    assert default.dtype == np.float32 and default.shape == stack.shape
    close = np.isclose(default, with_torch, atol=1e-3 * float(np.ptp(with_torch)))
    assert close.mean() > 0.99


# ----------------------------------------------------------------------------- without torch


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_descriptions_match_their_weights(name) -> None:
    path = shipped_model_path(name)
    described = json.loads(path.with_suffix(".json").read_text())
    assert described == json.loads(json.dumps(describe_weights(path))), (
        "run scripts/export_shipped_graphs.py after changing a shipped model"
    )


def test_a_shipped_model_on_a_cpu_is_the_same_model_without_its_network() -> None:
    light, full = load_model("default"), load_model("default", lightweight=False)
    assert not light.has_network and full.has_network and light.device_type == "cpu"
    assert light.config == full.config and light.meta == full.meta
    stack = simulate_plant(shape=(12, 96, 96), seed=5).observed
    norm = fit_normalization(stack, 0.5, 99.8)
    from_graph = model_quantization_error(light, stack, norm)  # familiarity on ONNX Runtime
    from_network = quantization_error(full.network, stack, norm)
    assert from_graph is not None and from_network is not None
    assert from_graph == pytest.approx(from_network, rel=1e-3)
    assert not light.has_network
    for (k, a), (_, b) in zip(
        light.network.state_dict().items(), full.network.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k  # loaded on first use
    assert light.has_network


def test_a_description_of_other_weights_is_not_used(tmp_path) -> None:
    """Edited weights beside the shipped graph and description load in full, from the weights."""
    source = shipped_model_path("paper")
    for suffix in (".onnx", ".json"):
        shutil.copy(source.with_suffix(suffix), tmp_path / f"dqlr_paper{suffix}")
    state = read_checkpoint(source)
    state["metrics"] = {**(state.get("metrics") or {}), "edited": 1.0}
    path = save_checkpoint(tmp_path / "dqlr_paper.pt", state)
    edited = load_model(path)
    assert edited.has_network and edited.meta["metrics"]["edited"] == 1.0


def test_enhancing_on_a_cpu_never_imports_torch(tmp_path) -> None:
    """A fresh `dqlr enhance` with the shipped model runs without torch (1.7 s of every start)
    and writes what the model with its torch network gives on ONNX Runtime."""
    stack = simulate_plant(shape=(8, 64, 64), seed=3).observed[::-1]  # turned over: a view
    source = write_stack(tmp_path / "in.tif", stack, voxel_size=(1.0, 0.25, 0.25))
    code = (
        "import sys; from dqlr.cli import main; "
        f"rc = main(['enhance', r'{source}', '-o', r'{tmp_path / 'out.tif'}', '--device', 'cpu']); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-1] == "False"
    full = load_model("default", lightweight=False)
    expected = dqlr.enhance(stack, full, voxel_size=(1.0, 0.25, 0.25), engine="onnx")
    np.testing.assert_array_equal(dqlr.read_stack(tmp_path / "out.tif").data, expected)


def test_only_a_device_that_must_be_the_cpu_skips_torch(monkeypatch, tmp_path) -> None:
    """ "auto" means the CPU without importing torch only where CUDA cannot be: Linux without the
    NVIDIA driver. Anything else loads the model with its network, as before."""
    from dqlr import runtime

    assert runtime.surely_cpu("cpu") and not runtime.surely_cpu("cuda")
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime, "Path", lambda _: tmp_path / "no-driver")
    assert runtime.surely_cpu("auto")
    monkeypatch.setattr(runtime, "Path", lambda _: tmp_path)  # a driver is there
    assert not runtime.surely_cpu("auto")
    monkeypatch.setattr("dqlr.model.checkpoint.surely_cpu", runtime.surely_cpu)
    assert load_model("default", device="auto").has_network  # torch decides


def test_running_out_of_memory_without_torch_stays_without_it(stack, monkeypatch) -> None:
    """The shrink-and-retry path of a shipped model on a CPU does not load its torch network."""
    model = load_model("paper")
    norm = fit_normalization(stack)
    run = OnnxEngine._run

    def small_only(self, tiles, level, context):
        if tiles.shape[-1] * tiles.shape[-2] * len(tiles) > 72 * 72:
            raise _OrtAllocationError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"
            )
        return run(self, tiles, level, context)

    monkeypatch.setattr(OnnxEngine, "_run", small_only)
    shrunk = [s for s, _, _ in iter_enhanced(stack, model, norm, EnhanceOptions(tile=512, overlap=16))]
    assert len(shrunk) == len(stack) and not model.has_network
