"""The network over a whole stack in one call, for runners without dqlr (bioimage.io packages).

`StackNetwork` takes a normalised stack (B, 1, Z, Y, X) and goes down z one slice at a time: E,
then R with the latents of the slice above as state (zeros for the top slice), then Q and G. That
is the arithmetic of `dqlr enhance` on whole slices (one tile per slice). It is built from plain
keyword arguments, imports only torch and the model's parts, can be compiled with
`torch.jit.script`, and has the state-dict keys of `DQLR`, so a DQLR's weights load as they are.

A depth-aware model is conditioned on one level per slice. `dqlr enhance` estimates those from each
stack; this module cannot, so it carries a fixed curve `levels` by slice index (the last value
holds below the curve's end; no curve means level 0, "reproduce as observed").

No `from __future__ import annotations` here: TorchScript reads the class annotations as types.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dqlr.model.encoder import Encoder
from dqlr.model.generator import Generator
from dqlr.model.recurrent import make_cell


class Codebook(nn.Module):
    """The quantizer at inference: the dictionary, looked up. It keeps the training statistics of
    dqlr.model.quantizer.VectorQuantizer (unused here) so that the state dicts match."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.zeros(size, dim), requires_grad=False)
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))
        self.register_buffer("initialised", torch.tensor(True))

    def forward(self, codes: Tensor) -> Tensor:
        """Each code of (B, C, H, W) replaced by its nearest entry (the distance as the quantizer
        computes it, so the same entry wins)."""
        b, c, h, w = codes.shape
        flat = codes.permute(0, 2, 3, 1).reshape(-1, c).float()
        book = self.codebook.float()
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        chosen = book[distance.argmin(1)]
        return chosen.reshape(b, h, w, c).permute(0, 3, 1, 2).to(codes.dtype).contiguous()


class StackNetwork(nn.Module):
    """(B, 1, Z, Y, X) normalised -> (B, 1, Z, Y, X) enhanced, in the same normalised units."""

    levels: list[float]

    def __init__(
        self,
        base_channels: int = 16,
        latent_channels: int = 32,
        downsample: int = 4,
        res_blocks: int = 1,
        recurrent: str = "convgru",
        quantize: bool = True,
        codebook_size: int = 128,
        condition: bool = False,
        levels: list[float] | None = None,
    ) -> None:
        super().__init__()
        inputs = 1 + int(condition)
        self.encoder = Encoder(base_channels, latent_channels, downsample, res_blocks, inputs)
        self.recurrent = make_cell(recurrent, latent_channels)
        self.quantizer = Codebook(codebook_size, latent_channels) if quantize else None
        self.generator = Generator(base_channels, latent_channels, downsample, res_blocks)
        self.downsample = downsample
        self.condition = condition
        self.levels = [float(v) for v in levels or []]

    def level(self, z: int) -> float:
        """The condition of slice z: the curve's value, its last value below its end, else 0."""
        if len(self.levels) == 0:
            return 0.0
        return self.levels[min(z, len(self.levels) - 1)]

    def forward(self, stack: Tensor) -> Tensor:
        height, width = stack.shape[-2], stack.shape[-1]
        pad_h = (self.downsample - height % self.downsample) % self.downsample
        pad_w = (self.downsample - width % self.downsample) % self.downsample
        # As dqlr.model.network.pad_to_multiple: reflect where the slice is large enough.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        slices: list[Tensor] = []
        context = torch.zeros(0)
        for z in range(stack.shape[2]):
            plane = stack[:, :, z]
            if pad_h > 0 or pad_w > 0:
                plane = F.pad(plane, [0, pad_w, 0, pad_h], mode=mode)
            if self.condition:
                plane = torch.cat([plane, torch.full_like(plane, self.level(z))], 1)
            latents = self.encoder(plane)
            if z == 0:
                context = torch.zeros_like(latents)
            code, _ = self.recurrent(latents, context)
            context = latents
            slices.append(
                self.generator(self.quantizer(code) if self.quantizer is not None else code)[
                    :, :, :height, :width
                ]
            )
        return torch.stack(slices, 2)
