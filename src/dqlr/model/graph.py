"""The network's step for one slice as an ONNX graph, for a runtime faster than torch on a CPU.

One call takes a batch of tiles of a slice, their degradation level and the latents of the slice
above, and gives the enhanced tiles, the tiles' own latents (the slice below needs them) and how far
their codes lie from the dictionary (the familiarity check): E, R, Q and G in one graph. The
familiarity check runs each tile with its own latents as state; the `own_context` input (1 per
tile) adds them to the context inside the graph, so that check is one call, not two. ONNX
Runtime runs it about 2x as fast as torch on 2 CPU cores (2.2x and 2.1x in the last two runs of
benchmarks/enhance_speed.py).
Predictions of the next slices stay with torch.

The shipped models come with their graph and a description of the rest of the checkpoint
(`dqlr_*.onnx` and `dqlr_*.json` beside the `.pt`, made by scripts/export_shipped_graphs.py); each
is used only while it records the SHA-256 of the weights file beside it. With both, a CPU enhances
without torch. Any other model is exported once, in memory, when first enhanced (about 1.5 s).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqlr.model.network import DQLR

# (B, 1, H, W), (B,), (B, C, H/ds, W/ds), and (B,): how much of the tile's own latents joins the
# context (0 for a slice below another, 1 for the familiarity check)
INPUTS = ("tiles", "level", "context", "own_context")
# (B, 1, H, W), (B, C, H/ds, W/ds), and (B, 2): per tile the squared distance of its codes to their
# dictionary entries and the codes' squared size (zeros without a quantizer; see familiarity)
OUTPUTS = ("slices", "latents", "code_error")
DIGEST_KEY = "dqlr_weights_sha256"  # metadata: the weights file the graph was made from
OPSET = 17


def _step_module(network: DQLR) -> Any:
    """encode -> one recurrent step with the slice above as state -> quantize -> generate."""
    import torch
    from torch import Tensor, nn

    from dqlr.model.familiarity import code_error

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(
            self, tiles: Tensor, level: Tensor, context: Tensor, own_context: Tensor
        ) -> tuple[Tensor, Tensor, Tensor]:
            net = self.network
            latents = net.encode(tiles, level if net.condition else None)
            code, _ = net.recurrent(latents, context + own_context[:, None, None, None] * latents)
            slices, _, _ = net.decode(code)
            if net.quantizer is None:
                return slices, latents, torch.zeros(code.shape[0], 2)
            return slices, latents, code_error(net.quantizer, code)

    return Step()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_step_graph(network: DQLR, digest: str = "") -> bytes:
    """The step graph of `network` (ONNX, batch and slice size free), with the weights' digest."""
    import onnx  # only needed to write a graph
    import torch

    ds, channels = network.config.downsample, network.config.latent_channels
    if next(network.parameters()).device.type != "cpu":  # export a CPU copy; leave the model where it is
        network = copy.deepcopy(network).cpu()
    step = _step_module(network).eval()
    example = (
        torch.zeros(1, 1, 4 * ds, 4 * ds),
        torch.zeros(1),
        torch.zeros(1, channels, 4, 4),
        torch.zeros(1),
    )
    tiles_axes = {0: "batch", 2: "height", 3: "width"}
    latent_axes = {0: "batch", 2: "latent_height", 3: "latent_width"}
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the quantizer's usage statistics, unused here
        torch.onnx.export(
            step,
            example,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to any file object
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={
                "tiles": tiles_axes,
                "level": {0: "batch"},
                "context": latent_axes,
                "own_context": {0: "batch"},
                "slices": tiles_axes,
                "latents": latent_axes,
                "code_error": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {DIGEST_KEY: digest})
    return bytes(graph.SerializeToString())


def shipped_graph(weights: str | Path, digest: str) -> bytes | None:
    """The graph file beside a weights file, if it was made from exactly these weights."""
    path = Path(weights).with_suffix(".onnx")
    if not digest or not path.is_file():
        return None
    data = path.read_bytes()
    # The digest is stored as a plain string in the file's metadata; finding it needs no parser.
    return data if f"{DIGEST_KEY}".encode() in data and digest.encode() in data else None


def model_description(weights: str | Path, digest: str) -> dict[str, Any] | None:
    """What a weights file holds besides its weights (config, normalisation, voxel size, metrics:
    scripts/export_shipped_graphs.py writes it beside the shipped ones as JSON), if it was made
    from exactly these weights: with the graph, enough to enhance on a CPU without torch."""
    path = Path(weights).with_suffix(".json")
    if not digest or not path.is_file():
        return None
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(description, dict) or description.get(DIGEST_KEY) != digest:
        return None
    return description
