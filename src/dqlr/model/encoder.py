"""E: one slice -> latent map x_i with C channels at 1/downsample resolution."""

from __future__ import annotations

import math

from torch import Tensor, nn

from dqlr.model.blocks import ResidualBlock, conv3x3


class Encoder(nn.Module):
    def __init__(self, base: int, latent: int, downsample: int, res_blocks: int, inputs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv3x3(inputs, base), nn.SiLU()]
        channels = base
        for _ in range(int(math.log2(downsample))):
            layers += [ResidualBlock(channels) for _ in range(res_blocks)]
            layers += [conv3x3(channels, channels * 2, stride=2), nn.SiLU()]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(res_blocks)]
        layers.append(nn.Conv2d(channels, latent, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, slices: Tensor) -> Tensor:
        """slices: (B, inputs, H, W), H and W multiples of downsample -> (B, C, H/ds, W/ds)."""
        return self.net(slices)
