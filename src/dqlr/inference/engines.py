"""What runs the network on a batch of tiles: torch (any device, predictions of next slices) or
ONNX Runtime (the CPU default: about 2x as fast as torch on 2 cores for the same graph,
benchmarks/results/enhance_speed.md).

Both take and give NumPy tiles, so the slice loop in dqlr.inference.enhance is the same for both;
the latents they hand back (what the slice below needs as state) stay in the engine's own type.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from dqlr.errors import DqlrError
from dqlr.model.checkpoint import LoadedModel
from dqlr.runtime import fast_math

if TYPE_CHECKING:
    import torch


def pad_tiles(tiles: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (B, H, W) tiles at the bottom and right to multiples of the network's downsampling,
    as dqlr.model.pad_to_multiple does (reflect where the tile is large enough, else edge)."""
    h, w = tiles.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return tiles
    mode: Literal["reflect", "edge"] = "reflect" if ph < h and pw < w else "edge"
    return np.pad(tiles, ((0, 0), (0, ph), (0, pw)), mode=mode)


class Engine(Protocol):
    def encode(self, tiles: np.ndarray, level: float | None) -> list[Any]:
        """Latents of (B, H, W) tiles."""
        ...

    def step(
        self, tiles: np.ndarray, level: float | None, above: Sequence[Any | None]
    ) -> tuple[np.ndarray, list[Any]]:
        """(B, 1 + predict_next, H, W) enhanced tiles and predictions, and the tiles' latents;
        `above` holds the latents of the slice above (None: the top slice's initial state)."""
        ...


class TorchEngine:
    def __init__(self, model: LoadedModel, predict_next: int = 0) -> None:
        self.network, self.device, self.predict_next = model.network, model.device, predict_next

    def _levels(self, n: int, level: float | None) -> torch.Tensor | None:
        import torch

        return None if level is None else torch.full((n,), level, device=self.device)

    def _tensor(self, tiles: np.ndarray) -> torch.Tensor:
        import torch

        padded = pad_tiles(tiles, self.network.config.downsample)
        return torch.from_numpy(np.ascontiguousarray(padded[:, None])).to(self.device)

    def encode(self, tiles: np.ndarray, level: float | None) -> list[torch.Tensor]:
        import torch

        with fast_math(), torch.inference_mode():
            return list(self.network.encode(self._tensor(tiles), self._levels(len(tiles), level)))

    def step(
        self, tiles: np.ndarray, level: float | None, above: Sequence[torch.Tensor | None]
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        import torch

        network, (h, w) = self.network, tiles.shape[-2:]
        with fast_math(), torch.inference_mode():
            latents = network.encode(self._tensor(tiles), self._levels(len(tiles), level))
            context = [
                a if a is not None else network.initial_state(x) for a, x in zip(above, latents, strict=True)
            ]
            codes = network.roll(latents, torch.stack(context), self.predict_next)
            slices, _, _ = network.decode(torch.cat(codes, 0))
            out = slices[:, 0, :h, :w].float().cpu().numpy()
        # decode's batch runs over (step, tile); give (tile, step)
        return out.reshape(len(codes), len(tiles), h, w).transpose(1, 0, 2, 3), list(latents)


class OnnxEngine:
    """The model's step graph (dqlr.model.graph) on ONNX Runtime's CPU provider.

    Needs no torch. Denormals are left as they are: flushing them in ONNX Runtime changed neither
    its speed nor its output on the shipped model, and it also flushed them in the calling thread.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.session = _session(model)
        self.names = {i.name for i in self.session.get_inputs()}  # a paper-mode graph has no level
        self.outputs = {o.name for o in self.session.get_outputs()}
        self.downsample = model.config.model.downsample
        self.channels = model.config.model.latent_channels

    def _feed(
        self, tiles: np.ndarray, level: float | None, context: np.ndarray | None, own_context: float = 0.0
    ) -> dict[str, np.ndarray]:
        batch = pad_tiles(tiles, self.downsample)[:, None].astype(np.float32, copy=False)
        if context is None:
            b, _, h, w = batch.shape
            context = np.zeros((b, self.channels, h // self.downsample, w // self.downsample), np.float32)
        feed = {"tiles": np.ascontiguousarray(batch), "context": context}
        if "level" in self.names:
            feed["level"] = np.full(len(tiles), level or 0.0, np.float32)
        if "own_context" in self.names:
            feed["own_context"] = np.full(len(tiles), own_context, np.float32)
        return feed

    def _run(
        self, tiles: np.ndarray, level: float | None, context: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        slices, latents = self.session.run(["slices", "latents"], self._feed(tiles, level, context))
        return slices, latents

    def code_error(self, tiles: np.ndarray) -> np.ndarray | None:
        """(distance of the codes to their dictionary entries, size of the codes), summed over
        `tiles`, each tile its own context at level 0 (as dqlr.model.familiarity measures); None
        for a graph made before it gave them."""
        if "code_error" not in self.outputs or "own_context" not in self.names:
            return None
        (error,) = self.session.run(["code_error"], self._feed(tiles, 0.0, None, own_context=1.0))
        return np.asarray(error, np.float64).sum(0)

    def encode(self, tiles: np.ndarray, level: float | None) -> list[np.ndarray]:
        return list(self._run(tiles, level, None)[1])  # latents do not depend on the context

    def step(
        self, tiles: np.ndarray, level: float | None, above: Sequence[np.ndarray | None]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        h, w = tiles.shape[-2:]
        if all(a is None for a in above):  # the top slice: zero initial state
            slices, latents = self._run(tiles, level, None)
        elif any(a is None for a in above):
            raise DqlrError("internal: a slice with latents above for only some tiles")
        else:
            slices, latents = self._run(tiles, level, np.stack(above))  # type: ignore[arg-type]
        return slices[:, :, :h, :w], list(latents)


def _session(model: LoadedModel) -> Any:
    """The model's ONNX Runtime session, made once per model and thread count (0.1-0.3 s, and
    its first run sets up memory for the shapes it meets)."""
    import onnxruntime as ort

    # as many threads as torch would use (a --threads setting), else ONNX Runtime's choice
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0
    key = f"onnx session, {threads} threads"
    if key not in model.cache:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        graph = model.step_graph()
        model.cache[key] = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return model.cache[key]


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def pick_engine(model: LoadedModel, name: str, predict_next: int) -> Engine:
    """ "auto": ONNX Runtime on a CPU for a model with a zero initial state and no predictions,
    torch otherwise. "onnx" asked for where it cannot run is an error."""
    reasons = []
    if model.device_type != "cpu":
        reasons.append(f"the model is on {model.device}")
    if predict_next:
        reasons.append("predictions of next slices are made with torch")
    if model.config.model.initial_state != "zero":
        reasons.append("the model starts from a random initial state")
    if not onnx_available():
        reasons.append("onnxruntime is not installed")
    if name == "onnx" and reasons:
        raise DqlrError(f"--engine onnx cannot run here: {'; '.join(reasons)}; use --engine torch")
    if name == "torch" or reasons:
        return TorchEngine(model, predict_next)
    return OnnxEngine(model)
