"""CM's invariants: incremental == batch == plain-loop reference; padding and batch composition
change nothing. Tiny sizes, dropout off (eval mode or dropout=0)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.memory.machine import ContinualMemoryMachine
from cmrec.memory.update import MemoryUpdate
from cmrec.models.cm import ContinualMemoryModel
from cmrec.models.registry import DataSpec, build_model
from tests.models.conftest import TINY

N = TINY["segment_len"]


def _model(spec: DataSpec, seed: int = 0) -> ContinualMemoryModel:
    torch.manual_seed(seed)
    model = build_model("cm", spec, TINY)
    assert isinstance(model, ContinualMemoryModel)
    return model.eval()


def _history(length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, 30, (length,), generator=generator)


def _kjt(histories: list[torch.Tensor], item_category: torch.Tensor) -> KeyedJaggedTensor:
    lengths = torch.tensor([len(h) for h in histories])
    items = torch.cat(histories) if histories else torch.zeros(0, dtype=torch.long)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "category"],
        values=torch.cat([items, item_category[items]]),
        lengths=torch.cat([lengths, lengths]),
    )


def _segments(history: torch.Tensor, num_segments: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, N) ids and mask of one history, aligned to its start."""
    count = num_segments or max(1, -(-len(history) // N))
    ids = torch.zeros(count * N, dtype=torch.long)
    mask = torch.zeros(count * N, dtype=torch.bool)
    ids[: len(history)] = history
    mask[: len(history)] = True
    return ids.view(1, count, N), mask.view(1, count, N)


# ---- a plain-loop reference of eqs. 1-3, written from the paper, one user and one slot at a time ----


def _gru_reference(cell_index: int, gru: torch.nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    w_ih, w_hh = gru.weight_ih[cell_index], gru.weight_hh[cell_index]
    b_ih, b_hh = gru.bias_ih[cell_index], gru.bias_hh[cell_index]
    size = h.shape[0]
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    r = torch.sigmoid(gi[:size] + gh[:size])
    z = torch.sigmoid(gi[size : 2 * size] + gh[size : 2 * size])
    n = torch.tanh(gi[2 * size :] + r * gh[2 * size :])
    return (1 - z) * n + z * h


def _update_reference(update: MemoryUpdate, memory: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """memory (K, d_m), features (n, d_x) of the real items only."""
    w1, w2, b = update.slot_attention.weight, update.item_attention.weight, update.item_attention.bias
    w_a = update.attention_score.weight[0]
    subspaces = update.subspaces
    new_slots = []
    for m_k in memory:
        alphas = torch.stack([w_a @ torch.tanh(w1 @ m_k + w2 @ f_n + b) for f_n in features])
        weights = torch.softmax(alphas, dim=0)
        l_k = (weights[:, None] * features).sum(0)
        m_parts = (update.slot_heads.weight @ m_k).chunk(subspaces)
        l_parts = (update.aligned_heads.weight @ l_k).chunk(subspaces)
        outs = [_gru_reference(z, update.gru, l_parts[z], m_parts[z]) for z in range(subspaces)]
        new_slots.append(update.aggregate.weight @ torch.cat(outs))
    return torch.stack(new_slots)


def _machine_reference(machine: ContinualMemoryMachine, x: torch.Tensor, length: int) -> torch.Tensor:
    """One user's memory: each segment encoded alone, holding only its real items."""
    memory = machine.initial
    for start in range(0, length, N):
        segment = x[start : min(start + N, length)]
        encoded = machine.encoder.encoder(segment[None] + machine.encoder.position[: len(segment)])[0]
        memory = _update_reference(machine.update, memory, encoded)
    return memory


def test_batch_path_equals_plain_loop_reference_forward_and_backward(spec: DataSpec) -> None:
    model = _model(spec)
    lengths = [9, 4, 0, 12, 1]
    histories = [_history(n, seed) for seed, n in enumerate(lengths)]
    memory, _, _, _ = model.build_memory(_kjt(histories, spec.item_category))
    expected = []
    for history in histories:
        x = model.embeddings.lookup(history)
        expected.append(_machine_reference(model.machine, x, len(history)))
    assert_close(memory, torch.stack(expected), rtol=1e-5, atol=1e-5)

    weights = torch.randn_like(memory)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((memory * weights).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((torch.stack(expected) * weights).sum(), params, allow_unused=True)
    checked = 0
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads, strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0, name
            continue
        assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        checked += 1
    assert checked >= 15  # embeddings, encoder, every update and GRU weight, the initial memory


def test_forward_path_equals_incremental_write(spec: DataSpec) -> None:
    model = _model(spec)
    history = _history(11, seed=3)
    memory, _, _, _ = model.build_memory(_kjt([history], spec.item_category))
    ids, mask = _segments(history)
    written = model.write(model.initial_memory(1), ids, mask)
    assert_close(written, memory)


@settings(max_examples=15, deadline=None)
@given(
    length=st.integers(0, 20),
    cuts=st.lists(st.integers(0, 5), max_size=4),
    seed=st.integers(0, 1000),
)
def test_write_in_any_chunking_equals_one_call(length: int, cuts: list[int], seed: int) -> None:
    spec = DataSpec(num_items=30, num_categories=0)
    model = _model(spec)
    history = _history(length, seed)
    ids, mask = _segments(history, num_segments=5)
    whole = model.write(model.initial_memory(1), ids, mask)
    # Segment by segment.
    memory = model.initial_memory(1)
    for t in range(ids.shape[1]):
        memory = model.write(memory, ids[:, t], mask[:, t])
    assert_close(memory, whole)
    # Random chunkings of whole segments.
    bounds = sorted({0, 5, *cuts})
    memory = model.initial_memory(1)
    for begin, end in itertools.pairwise(bounds):
        memory = model.write(memory, ids[:, begin:end], mask[:, begin:end])
    assert_close(memory, whole)


def test_memory_and_score_ignore_other_users_and_padding(spec: DataSpec) -> None:
    model = _model(spec)
    user = _history(7, seed=1)
    alone, _, _, _ = model.build_memory(_kjt([user], spec.item_category))
    crowd = [_history(19, seed=2), user, _history(3, seed=4), _history(0, seed=5)]
    together, _, _, _ = model.build_memory(_kjt(crowd, spec.item_category))
    assert_close(together[1], alone[0])
    candidates = torch.tensor([5, 6, 7])
    scores_alone = model.score(alone.expand(3, -1, -1), candidates)
    scores_together = model.score(together[1:2].expand(3, -1, -1), candidates)
    assert_close(scores_alone, scores_together)
    # Extra whole padding segments written explicitly change nothing either.
    ids, mask = _segments(user)
    padded_ids, padded_mask = _segments(user, num_segments=6)
    assert_close(
        model.write(model.initial_memory(1), padded_ids, padded_mask),
        model.write(model.initial_memory(1), ids, mask),
    )


def test_empty_history_keeps_the_initial_memory(spec: DataSpec) -> None:
    model = _model(spec)
    memory, _, _, _ = model.build_memory(_kjt([torch.zeros(0, dtype=torch.long)], spec.item_category))
    assert_close(memory[0], model.machine.initial)
