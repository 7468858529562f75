"""The memory machine's parts against plain references: forward and backward."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from cmrec.data.jagged import segment_jagged
from cmrec.memory.gru import GroupedGRUCell
from cmrec.memory.update import MemoryUpdate


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


def test_retention_init_starts_from_a_memory_that_keeps_what_it_holds() -> None:
    torch.manual_seed(0)
    default = MemoryUpdate(memory_dim=16, item_dim=8, model_dim=16, subspaces=4)
    retaining = MemoryUpdate(memory_dim=16, item_dim=8, model_dim=16, subspaces=4, retention_init=3.0)
    identity = retaining.aggregate.weight @ retaining.slot_heads.weight  # W_o W^M
    torch.testing.assert_close(identity, torch.eye(16), rtol=0, atol=1e-5)
    hidden = retaining.gru.hidden_size
    raised = retaining.gru.bias_ih[:, hidden : 2 * hidden] - 3.0
    assert raised.abs().max() <= hidden**-0.5  # the default draw, moved up by the gate bias
    # An untrained memory written with 25 segments still holds much of its start with the
    # retentive initialisation, and almost nothing of it with the default one.
    start = torch.randn(4, 5, 16)
    kept = []
    for update in (default, retaining):
        memory = start
        for _ in range(25):
            features = torch.randn(4, 6, 8)
            memory = update(
                memory, features, update.project_items(features), torch.ones(4, 6, dtype=torch.bool)
            )
        kept.append(torch.nn.functional.cosine_similarity(memory.flatten(1), start.flatten(1)).mean())
    assert kept[0] < 0.2 < 0.5 < kept[1], kept


def test_slow_slots_keep_part_of_themselves_and_chunking_changes_nothing() -> None:
    from cmrec.memory.encoder import SegmentEncoder
    from cmrec.memory.machine import ContinualMemoryMachine

    torch.manual_seed(0)
    paper = MemoryUpdate(memory_dim=16, item_dim=8, model_dim=16, subspaces=4)
    slow = MemoryUpdate(memory_dim=16, item_dim=8, model_dim=16, subspaces=4, slots=5, slowest_write_rate=0.1)
    slow.load_state_dict(paper.state_dict())  # the rates are derived from the config, not saved
    assert_close(slow.write_rate, torch.tensor([1.0, 0.1**0.25, 0.1**0.5, 0.1**0.75, 0.1]))
    memory, features = torch.randn(3, 5, 16), torch.randn(3, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    written = paper(memory, features, paper.project_items(features), mask)
    kept = slow(memory, features, slow.project_items(features), mask)
    assert_close(kept[:, 0], written[:, 0])  # the fastest slot is the paper's write
    assert_close(kept[:, 4], 0.9 * memory[:, 4] + 0.1 * written[:, 4])
    # Writing 4 segments at once equals 2 + 2, and a padded segment leaves the memory as it was.
    machine = ContinualMemoryMachine(SegmentEncoder(8, 2, 1, 16, 0.0, 6), slow, slots=5, memory_dim=16)
    x, segment_mask = torch.randn(3, 4, 6, 8), torch.ones(3, 4, 6, dtype=torch.bool)
    segment_mask[1, 3] = False
    start = machine.initial_memory(3)
    whole = machine(start, x, segment_mask)
    halves = machine(machine(start, x[:, :2], segment_mask[:, :2]), x[:, 2:], segment_mask[:, 2:])
    assert_close(whole, halves)
    assert_close(whole[1], machine(start, x[:, :3], segment_mask[:, :3])[1])


def test_fused_step_equals_the_reference_write_with_its_gradients() -> None:
    """`MemoryUpdate.step` (block-diagonal GRUs, item side hoisted) writes what `forward` writes."""
    torch.manual_seed(0)
    for rate in (1.0, 0.3):
        update = MemoryUpdate(16, 8, 16, 4, retention_init=2.0, slots=5, slowest_write_rate=rate).double()
        features = torch.randn(3, 2, 6, 8, dtype=torch.double, requires_grad=True)
        memory = torch.randn(3, 5, 16, dtype=torch.double, requires_grad=True)
        mask = torch.rand(3, 2, 6) > 0.4
        mask[:, :, 0] = True
        fused = update.fuse(features)
        got = update.step(memory, fused.items[:, 1], fused.gates[:, 1], mask[:, 1], fused)
        want = update(memory, features[:, 1], update.project_items(features[:, 1]), mask[:, 1])
        assert_close(got, want, rtol=0, atol=1e-12)
        weights = torch.randn_like(want)
        grads_got = torch.autograd.grad((got * weights).sum(), [memory, features, update.gru.weight_ih])
        grads_want = torch.autograd.grad((want * weights).sum(), [memory, features, update.gru.weight_ih])
        for g, w in zip(grads_got, grads_want, strict=True):
            assert_close(g, w, rtol=0, atol=1e-12)
