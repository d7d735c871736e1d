"""The DQLR network: E -> R (along z) -> Q -> G, assembled from its four parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dqlr.config import ModelConfig
from dqlr.model.encoder import Encoder
from dqlr.model.generator import Generator
from dqlr.model.quantizer import VectorQuantizer
from dqlr.model.recurrent import make_cell


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad the last two axes (reflect where possible) so any slice size fits the downsampling."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class DQLR(nn.Module):
    """The network. `condition` (a depth-aware model, decided by Config.mode) gives the encoder each
    slice's degradation level as a second input channel."""

    def __init__(self, config: ModelConfig, condition: bool = False) -> None:
        super().__init__()
        self.config = config
        self.condition = condition
        c = config
        self.encoder = Encoder(
            c.base_channels, c.latent_channels, c.downsample, c.res_blocks, 1 + int(condition)
        )
        self.recurrent = make_cell(c.recurrent, c.latent_channels)
        self.quantizer: VectorQuantizer | None = (
            VectorQuantizer(
                c.codebook_size,
                c.latent_channels,
                beta=c.beta,
                ema=c.ema,
                decay=c.ema_decay,
                kmeans_init=c.kmeans_init,
                dead_code_restart=c.dead_code_restart,
                dead_code_threshold=c.dead_code_threshold,
            )
            if c.quantize
            else None
        )
        self.generator = Generator(c.base_channels, c.latent_channels, c.downsample, c.res_blocks)

    def initial_state(self, like: Tensor) -> Tensor:
        """State for the top slice, which has no slice above: zeros or N(0, 1) as configured."""
        if self.config.initial_state == "random":
            return torch.randn_like(like)
        return torch.zeros_like(like)

    def encode(self, slices: Tensor, condition: Tensor | None = None) -> Tensor:
        """(B, 1, H, W), H and W multiples of the downsampling -> latents x.

        A conditioned (depth-aware) model also takes the degradation level of each slice (B,),
        given to the encoder as a constant second channel; 0 means "reproduce as observed".
        """
        if self.condition:
            if condition is None:
                condition = slices.new_zeros(slices.shape[0])
            level = condition.to(slices.dtype)[:, None, None, None].expand_as(slices)
            slices = torch.cat([slices, level], 1)
        return self.encoder(slices)

    def roll(self, latent: Tensor, context: Tensor, predict: int) -> list[Tensor]:
        """Codes y_i, y_{i+1} ... y_{i+predict} from x_i with the slice above as hidden state."""
        code, state = self.recurrent(latent, context)
        codes = [code]
        for _ in range(predict):
            code, state = self.recurrent(code, state)
            codes.append(code)
        return codes

    def decode(self, codes: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Quantize (unless ablated) and generate slices; returns (slices, vq_loss, usage stats)."""
        if self.quantizer is None:
            return self.generator(codes), codes.new_zeros(()), {}
        quantized, vq_loss, stats = self.quantizer(codes)
        return self.generator(quantized), vq_loss, stats

    def forward(
        self, window: Tensor, top: Tensor | None = None, condition: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Training pass on a window (B, T, H, W): slice 0 is the context above, 1..T-1 the targets.

        Returns the reconstruction of slice 1 and predictions of slices 2..T-1 as (B, T-1, H, W).
        `top` (B,) marks windows whose context is replaced by the initial state, as for a top slice.
        `condition` (B,) is the degradation level of a depth-aware model (the window's slices share it).
        """
        b, t, _, _ = window.shape
        padded, (h, w) = pad_to_multiple(window, self.config.downsample)
        if condition is not None:
            condition = condition.repeat_interleave(2)
        latents = self.encode(padded[:, :2].reshape(b * 2, 1, *padded.shape[-2:]), condition)
        latents = latents.reshape(b, 2, *latents.shape[1:])
        context, current = latents[:, 0], latents[:, 1]
        if top is not None and bool(top.any()):
            mask = top.to(context.dtype)[:, None, None, None]
            context = mask * self.initial_state(context) + (1 - mask) * context
        codes = torch.stack(self.roll(current, context, predict=t - 2), 1)
        slices, vq_loss, stats = self.decode(codes.flatten(0, 1))
        slices = slices.reshape(b, t - 1, *slices.shape[-2:])[..., :h, :w]
        return slices, vq_loss, stats
