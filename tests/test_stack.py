"""The whole-stack network (dqlr.model.stack): the arithmetic of `dqlr enhance`, in one call."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from dqlr.config import EnhanceOptions
from dqlr.inference.enhance import iter_enhanced
from dqlr.model.checkpoint import LoadedModel, build_network
from dqlr.model.package import bundled_source, stack_network
from dqlr.model.stack import StackNetwork
from dqlr.normalize import fit_normalization, normalize
from tests.conftest import tiny_config


def _model(mode: str, **model: object) -> LoadedModel:
    config = tiny_config(**model).with_overrides({"mode": mode})
    network = build_network(config)
    with torch.no_grad():  # a dictionary spread like trained codes, so quantizing matters
        if network.quantizer is not None:
            network.quantizer.codebook.normal_(0.0, 0.5)
    return LoadedModel(network.eval(), config)


def _float_stack() -> np.ndarray:
    """Not simulated: smoothed noise as float32, odd slice sizes (padding is exercised)."""
    rng = np.random.default_rng(7)
    return ndimage.gaussian_filter(rng.normal(size=(5, 30, 34)), 1.5).astype(np.float32) * 40 + 3


@pytest.mark.parametrize(
    ("mode", "model"),
    [
        ("depth-aware", {}),
        ("paper", {"recurrent": "convlstm", "quantize": False}),
    ],
)
def test_the_stack_network_gives_what_enhance_gives(mode: str, model: dict[str, object]) -> None:
    loaded = _model(mode, **model)
    stack = _float_stack()
    levels = np.linspace(0.1, 0.9, len(stack)).astype(np.float32) if mode == "depth-aware" else None
    norm = fit_normalization(stack)
    options = EnhanceOptions(engine="torch", tile=64, overlap=0, guard=False)
    expected = np.stack([s for s, _, _ in iter_enhanced(stack, loaded, norm, options, levels=levels)])
    with torch.no_grad():
        got = stack_network(loaded, levels)(torch.from_numpy(normalize(stack, norm))[None, None])
    assert got.shape == (1, 1, *stack.shape)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-5)


def test_a_conditioned_network_follows_its_curve_and_holds_its_last_value() -> None:
    loaded = _model("depth-aware", quantize=False)  # no dictionary to snap small changes back
    stack = torch.from_numpy(normalize(_float_stack(), fit_normalization(_float_stack())))[None, None]
    with torch.no_grad():
        short = stack_network(loaded, np.array([0.0, 0.5], np.float32))(stack)
        long = stack_network(loaded, np.array([0.0, 0.5, 0.5, 0.5, 0.5], np.float32))(stack)
        flat = stack_network(loaded, None)(stack)
    assert torch.equal(short, long)
    assert torch.equal(short[:, :, 0], flat[:, :, 0])  # level 0 on top in both
    assert float((short[:, :, 1:] - flat[:, :, 1:]).abs().min()) > 0


def test_the_bundled_source_imports_only_torch_and_scripts_to_the_same_result(tmp_path: Path) -> None:
    source = bundled_source()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(str(node.module).split(".")[0])
    assert imported == {"torch", "math"}
    (tmp_path / "dqlr_stack.py").write_text(source)  # TorchScript reads the source from a file
    spec = importlib.util.spec_from_file_location("bundled_dqlr_stack", tmp_path / "dqlr_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = _model("depth-aware")
    kwargs = {
        "base_channels": 8,
        "latent_channels": 8,
        "res_blocks": 1,
        "condition": True,
        "levels": [0.2, 0.6],
    }
    bundled = module.StackNetwork(**kwargs)
    bundled.load_state_dict(loaded.network.state_dict())  # strict: DQLR's keys, one for one
    ours = StackNetwork(**kwargs)
    ours.load_state_dict(loaded.network.state_dict())
    stack = torch.rand(1, 1, 3, 20, 24)
    with torch.no_grad():
        expected = ours.eval()(stack)
        assert torch.equal(bundled.eval()(stack), expected)
        assert torch.equal(torch.jit.script(bundled)(stack), expected)
