"""R: a convolutional recurrent cell run along z on the latent maps.

The hidden state carries the latent of the slice above, so the code y_i of a slice is correlated with
its neighbours; rolling the cell forward from y_i predicts y_{i+1} ... y_{i+n}.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvGRUCell(nn.Module):
    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.gates = nn.Conv2d(2 * channels, 2 * channels, kernel, padding=pad)
        self.candidate = nn.Conv2d(2 * channels, channels, kernel, padding=pad)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, new_state); for a GRU both are the new hidden map."""
        update, reset = torch.sigmoid(self.gates(torch.cat([x, state], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * state], 1)))
        hidden = (1 - update) * state + update * candidate
        return hidden, hidden


class ConvLSTMCell(nn.Module):
    """ConvLSTM whose state packs (hidden, cell) along channels, so callers treat both cells alike."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.gates = nn.Conv2d(2 * channels, 4 * channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if state.shape[1] == self.channels:  # a bare latent as state: start with an empty cell
            state = torch.cat([state, torch.zeros_like(state)], 1)
        hidden, cell = state.chunk(2, 1)
        i, f, o, g = self.gates(torch.cat([x, hidden], 1)).chunk(4, 1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, torch.cat([hidden, cell], 1)


def make_cell(kind: str, channels: int) -> nn.Module:
    return ConvGRUCell(channels) if kind == "convgru" else ConvLSTMCell(channels)
