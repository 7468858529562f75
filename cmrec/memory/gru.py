"""Z independent GRU cells applied in one batched call (the per-subspace GRUs of eq. 3)."""

from __future__ import annotations

import math

import torch
from torch import nn


class GroupedGRUCell(nn.Module):
    """Z GRU cells, cell z updating group z of the hidden state from group z of the input.

    Equal to Z separate `torch.nn.GRUCell`s (same gate order r, z, n and the same initialisation),
    but one einsum per gate block instead of Z small matmuls.

    Args:
        groups: Z.
        input_size: input width of each cell.
        hidden_size: hidden width of each cell.

    Example::

        cell = GroupedGRUCell(groups=4, input_size=16, hidden_size=16)
        h = cell(x, h)   # x: (..., 4, 16), h: (..., 4, 16) -> (..., 4, 16)
    """

    def __init__(self, groups: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.groups = groups
        self.hidden_size = hidden_size
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(
            torch.empty(groups, 3 * hidden_size, input_size).uniform_(-bound, bound)
        )
        self.weight_hh = nn.Parameter(
            torch.empty(groups, 3 * hidden_size, hidden_size).uniform_(-bound, bound)
        )
        self.bias_ih = nn.Parameter(torch.empty(groups, 3 * hidden_size).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(groups, 3 * hidden_size).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x: (..., Z, input_size), h: (..., Z, hidden_size) -> new h (..., Z, hidden_size)."""
        gates_x = torch.einsum("...zi,zgi->...zg", x, self.weight_ih) + self.bias_ih  # (..., Z, 3H)
        gates_h = torch.einsum("...zh,zgh->...zg", h, self.weight_hh) + self.bias_hh  # (..., Z, 3H)
        return self.combine(gates_x, gates_h, h)

    @staticmethod
    def combine(gates_x: torch.Tensor, gates_h: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The new h from the gates' (..., Z, 3H) input and hidden parts (biases added) and h."""
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + reset * h_n)
        return (1.0 - update) * candidate + update * h
