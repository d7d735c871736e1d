"""Small building blocks shared by the encoder and the generator."""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip.

    No normalisation layer on purpose: group or batch statistics pool over the whole tile, so a tiled
    slice would differ from an untiled one; without them every output pixel depends only on its
    receptive field and tiles blend seamlessly.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), conv3x3(channels, channels), nn.SiLU(), conv3x3(channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)
