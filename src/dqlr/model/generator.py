"""G: quantized code -> slice at full resolution (the mirror of the encoder)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from dqlr.model.blocks import ResidualBlock, conv3x3


class Generator(nn.Module):
    def __init__(self, base: int, latent: int, downsample: int, res_blocks: int) -> None:
        super().__init__()
        steps = int(math.log2(downsample))
        channels = base * 2**steps
        layers: list[nn.Module] = [nn.Conv2d(latent, channels, 1), nn.SiLU()]
        layers += [ResidualBlock(channels) for _ in range(res_blocks)]
        for _ in range(steps):
            # Nearest upsampling + conv avoids the checkerboard of transposed convolutions.
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(channels, channels // 2)]
            channels //= 2
            layers += [nn.SiLU()] + [ResidualBlock(channels) for _ in range(res_blocks)]
        layers.append(conv3x3(channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes)
