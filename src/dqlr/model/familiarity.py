"""How familiar a model finds a stack: how far its codes lie from the model's dictionary.

The quantizer replaces every code by its nearest dictionary entry. On stacks like the training
data the codes sit close to the entries; on other structure (nuclei instead of walls, a regular
grid) they lie farther away, and the generator then draws the nearest familiar structure instead:
invented walls. The relative distance ||y - Q(y)||² / ||y||² on a few slices of a stack, against
the same number on the model's validation stack (saved with the model), is a check that needs no
clean data and runs before any enhancement.

Only the sharp third of the stack (the top, as the model sees it) is sampled: deeper slices mix
structure with degradation, and how deep a stack reaches would move the number (simulated SAM
stacks of 12 to 48 slices measured 0.96-1.24 of the reference over all slices, 0.77-1.10 over the
top third; nuclei 1.52, a regular wall grid 1.63).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dqlr.normalize import Normalization, normalize

if TYPE_CHECKING:
    from torch import Tensor

    from dqlr.model.network import DQLR
    from dqlr.model.quantizer import VectorQuantizer

SAMPLE_SLICES = 6  # evenly spread over the stack
SAMPLE_SIDE = 256  # central crop of each (statistics are the same across a slice)
METRIC = "val_quant_error"  # the model's own value, in its checkpoint's metrics


def sample_slices(stack: Any, norm: Normalization) -> np.ndarray:
    """SAMPLE_SLICES normalised central crops (n, side, side), evenly spread over the top third."""
    depth, height, width = (int(n) for n in stack.shape)
    y0, x0 = max((height - SAMPLE_SIDE) // 2, 0), max((width - SAMPLE_SIDE) // 2, 0)
    top = max(depth // 3, min(depth, 3))
    chosen = np.unique(np.linspace(0, top - 1, SAMPLE_SLICES).round().astype(int))
    crops = [np.asarray(stack[int(z), y0 : y0 + SAMPLE_SIDE, x0 : x0 + SAMPLE_SIDE]) for z in chosen]
    return np.stack([normalize(c, norm) for c in crops]).astype(np.float32)


def code_error(quantizer: VectorQuantizer, codes: Tensor) -> Tensor:
    """(B, 2): per tile of (B, C, H, W) codes, the squared distance of its codes to their nearest
    dictionary entries and the codes' squared size. The torch check below and the step graph of
    dqlr.model.graph (the check on ONNX Runtime) both compute it here."""
    import torch

    b, c = codes.shape[:2]
    flat = codes.permute(0, 2, 3, 1).reshape(b, -1, c).float()
    chosen = quantizer.codebook[quantizer.nearest(flat.reshape(-1, c))].float().reshape(b, -1, c)
    return torch.stack([((flat - chosen) ** 2).sum((1, 2)), (flat**2).sum((1, 2))], 1)


def quantization_error(network: DQLR, stack: Any, norm: Normalization) -> float | None:
    """Mean relative distance of the sampled slices' codes to their dictionary entries; None for a
    model without quantizer. Each slice is its own context (no random initial state, no slice
    above needed), and a depth-aware model gets level 0: the check is about structure."""
    import torch

    from dqlr.model.network import pad_to_multiple

    if network.quantizer is None:
        return None
    device = next(network.parameters()).device
    with torch.inference_mode():
        slices = torch.from_numpy(sample_slices(stack, norm)).to(device)[:, None]
        latents = network.encode(pad_to_multiple(slices, network.config.downsample)[0], None)
        distance, size = code_error(network.quantizer, network.roll(latents, latents, 0)[0]).sum(0)
        return float(distance / size.clamp_min(1e-12))
