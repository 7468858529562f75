"""The memory machine's parts against plain references: forward and backward."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from cmrec.memory.gru import GroupedGRUCell
from cmrec.memory.segments import segment_jagged


def test_grouped_gru_equals_separate_torch_gru_cells() -> None:
    torch.manual_seed(0)
    cell = GroupedGRUCell(groups=3, input_size=5, hidden_size=4)
    x = torch.randn(7, 3, 5, requires_grad=True)
    h = torch.randn(7, 3, 4, requires_grad=True)
    out = cell(x, h)
    references = []
    for z in range(3):
        ref = torch.nn.GRUCell(5, 4)
        with torch.no_grad():
            ref.weight_ih.copy_(cell.weight_ih[z])
            ref.weight_hh.copy_(cell.weight_hh[z])
            ref.bias_ih.copy_(cell.bias_ih[z])
            ref.bias_hh.copy_(cell.bias_hh[z])
        references.append(ref(x[:, z], h[:, z]))
    expected = torch.stack(references, dim=1)
    assert_close(out, expected)
    weights = torch.randn_like(out)
    (grad_x, grad_h) = torch.autograd.grad((out * weights).sum(), (x, h))
    (ref_x, ref_h) = torch.autograd.grad((expected * weights).sum(), (x, h))
    assert_close(grad_x, ref_x)
    assert_close(grad_h, ref_h)


def test_segment_jagged_layout() -> None:
    values = torch.arange(1, 8)  # histories [1, 2, 3, 4, 5] and [6, 7], N = 2
    segments, mask = segment_jagged(values, torch.tensor([5, 2, 0]), segment_len=2)
    assert segments.shape == (3, 3, 2) and mask.shape == (3, 3, 2)
    assert segments[0].tolist() == [[1, 2], [3, 4], [5, 0]]
    assert segments[1].tolist() == [[6, 7], [0, 0], [0, 0]]
    assert mask[0].tolist() == [[True, True], [True, True], [True, False]]
    assert not mask[2].any()
    features, _ = segment_jagged(torch.randn(7, 3, requires_grad=True), torch.tensor([5, 2, 0]), 2)
    assert features.shape == (3, 3, 2, 3) and features.requires_grad
