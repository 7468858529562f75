"""CM's invariants: incremental == batch == plain-loop reference; padding and batch composition
change nothing. Tiny sizes, dropout off (eval mode or dropout=0)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.errors import ConfigError
from cmrec.memory.machine import ContinualMemoryMachine
from cmrec.memory.profile import Prototypes
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
    memory = model.machine.slots_of(memory)  # the history-mean rows have a test of their own
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
    assert_close(model.machine.slots_of(memory)[0], model.machine.initial)
    assert torch.count_nonzero(memory[0, TINY["slots"] :]) == 0  # no mean, no segment counted


# ---- history_mean: two more rows that keep the exact mean of the whole history ----

# The history-mean and profile rows alone (wave 4): the recurrent row and the count sketch have
# tests of their own (tests/models/test_cm_model.py).
MEAN_TINY = {
    **TINY,
    "history_mean": True,
    "recent_clicks": False,
    "recurrent_state": False,
    "recurrent_readout": "own",
    "count_buckets": 0,
    "item_buckets": 0,
}


def _mean_model(spec: DataSpec, seed: int = 0, profile_rows: int = 0) -> ContinualMemoryModel:
    torch.manual_seed(seed)
    model = build_model("cm", spec, {**MEAN_TINY, "profile_rows": profile_rows})
    assert isinstance(model, ContinualMemoryModel)
    return model.eval()


def test_history_mean_rows_hold_the_mean_of_segment_means_and_the_slots_are_unchanged(spec: DataSpec) -> None:
    model = _mean_model(spec)
    lengths = [9, 4, 0, 12, 1]
    histories = [_history(n, seed) for seed, n in enumerate(lengths)]
    memory, _, _, _ = model.build_memory(_kjt(histories, spec.item_category))
    assert memory.shape == (5, TINY["slots"] + 2, TINY["memory_dim"])
    for row, history in zip(memory, histories, strict=True):
        x = model.embeddings.lookup(history)
        assert_close(
            row[: TINY["slots"]], _machine_reference(model.machine, x, len(history)), rtol=1e-5, atol=1e-5
        )
        segment_means = [x[start : start + N].mean(dim=0) for start in range(0, len(history), N)]
        expected = (
            torch.stack(segment_means).mean(dim=0) if segment_means else torch.zeros(TINY["memory_dim"])
        )
        assert_close(row[-2], expected, rtol=1e-5, atol=1e-6)
        assert row[-1, 0].item() == len(segment_means)
        assert torch.count_nonzero(row[-1, 1:]) == 0


@pytest.mark.parametrize("profile_rows", [0, 2])
@settings(max_examples=10, deadline=None)
@given(length=st.integers(0, 20), cuts=st.lists(st.integers(0, 5), max_size=4), seed=st.integers(0, 1000))
def test_history_mean_write_in_any_chunking_equals_one_call_and_the_batch_path(
    profile_rows: int, length: int, cuts: list[int], seed: int
) -> None:
    item_category = torch.tensor([0, 1] + [2 + i % 5 for i in range(28)])
    spec = DataSpec(num_items=30, num_categories=7, item_category=item_category)
    model = _mean_model(spec, profile_rows=profile_rows)
    history = _history(length, seed)
    ids, mask = _segments(history, num_segments=5)
    whole = model.write(model.initial_memory(1), ids, mask)
    memory = model.initial_memory(1)
    for begin, end in itertools.pairwise(sorted({0, 5, *cuts})):
        memory = model.write(memory, ids[:, begin:end], mask[:, begin:end])
    assert_close(memory, whole)
    batch, _, _, _ = model.build_memory(_kjt([history], item_category))
    assert_close(batch, whole)


def test_history_mean_scores_read_the_mean(spec: DataSpec) -> None:
    """The head reads the mean rows: changing only the mean changes the score; the count does not."""
    model = _mean_model(spec)
    memory, _, _, _ = model.build_memory(_kjt([_history(9, seed=1)], spec.item_category))
    candidates = torch.tensor([5, 6, 7])
    base = model.score(memory.expand(3, -1, -1), candidates)
    other_mean = memory.clone()
    other_mean[:, -2] += 1.0
    assert (model.score(other_mean.expand(3, -1, -1), candidates) - base).abs().min() > 1e-6
    _count_is_ignored_and_rows_gather(model, memory, candidates, base)


def _count_is_ignored_and_rows_gather(
    model: ContinualMemoryModel, memory: torch.Tensor, candidates: torch.Tensor, base: torch.Tensor
) -> None:
    """The segment count does not change a score, and scoring many candidates against shared
    memories by row equals scoring gathered copies."""
    other_count = memory.clone()
    other_count[:, -1, 0] += 5.0
    assert_close(model.score(other_count.expand(len(candidates), -1, -1), candidates), base)
    rows = torch.zeros(len(candidates), dtype=torch.long)
    candidate_x = model.embeddings.lookup(candidates)
    assert_close(model.reason(memory, candidate_x, rows), model.reason(memory[rows], candidate_x))


def test_history_mean_needs_the_match_head_and_equal_widths(spec: DataSpec) -> None:
    with pytest.raises(ConfigError, match="history_mean needs readout: match"):
        build_model("cm-paper", spec, {**TINY, "history_mean": True})
    with pytest.raises(ConfigError, match="item_dim == memory_dim"):
        build_model("cm", spec, {**MEAN_TINY, "memory_dim": 16})


# ---- profile_rows: an interest profile (a histogram over learned prototypes) beside the mean ----

PROFILE = 2  # profile rows in these tests


def test_profile_rows_hold_the_mean_of_segment_assignments_between_mean_and_count(spec: DataSpec) -> None:
    model = _mean_model(spec, profile_rows=PROFILE)
    plain = _mean_model(spec)
    own = ("reason.", "machine.prototypes")
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith(own)}
    plain.load_state_dict(shared, strict=False)  # the same tables, encoder, update and initial slots
    lengths = [9, 4, 0, 12, 1]
    histories = [_history(n, seed) for seed, n in enumerate(lengths)]
    memory, _, _, _ = model.build_memory(_kjt(histories, spec.item_category))
    k, d = TINY["slots"], TINY["memory_dim"]
    assert memory.shape == (5, k + 2 + PROFILE, d)
    assert model.config.memory_rows == k + 2 + PROFILE
    prototypes = model.machine.prototypes
    assert prototypes is not None
    for row, history in zip(memory, histories, strict=True):
        x = model.embeddings.lookup(history)
        assignment = prototypes(x)  # (n, P d)
        starts = range(0, len(history), N)
        expected = (
            torch.stack([assignment[s : s + N].mean(dim=0) for s in starts]).mean(dim=0)
            if len(history)
            else torch.zeros(PROFILE * d)
        )
        profile = row[k + 1 : k + 1 + PROFILE].flatten()
        assert_close(profile, expected, rtol=1e-5, atol=1e-6)
        assert profile.sum().item() == pytest.approx(1.0 if len(history) else 0.0, abs=1e-5)
        segment_means = [x[s : s + N].mean(dim=0) for s in starts]
        mean = torch.stack(segment_means).mean(dim=0) if segment_means else torch.zeros(d)
        assert_close(row[k], mean, rtol=1e-5, atol=1e-6)
        assert row[-1, 0].item() == len(segment_means)
    # The slots do not depend on the profile: the same as a model without it.
    without, _, _, _ = plain.build_memory(_kjt(histories, spec.item_category))
    assert_close(memory[:, :k], without[:, :k])


def test_the_head_reads_the_profile_share_of_the_candidate(spec: DataSpec) -> None:
    model = _mean_model(spec, profile_rows=PROFILE)
    memory, _, _, _ = model.build_memory(_kjt([_history(9, seed=1)], spec.item_category))
    candidates = torch.tensor([5, 6, 7])
    base = model.score(memory.expand(3, -1, -1), candidates)
    k, d = TINY["slots"], TINY["memory_dim"]
    # The candidate is assigned with the profile's own prototypes (one W_p, shared).
    assert model.reason.assign is model.machine.prototypes
    assert model.machine.prototypes is not None
    assignment = model.machine.prototypes(model.embeddings.lookup(candidates))
    on_own, on_other = assignment[0].argmax(), assignment[0].argmin()  # candidate 5's likeliest bin
    profiles = []
    for bin_ in (on_own, on_other):  # all of the history on one bin: the same total, moved
        other = memory.clone()
        other[:, k + 1 : k + 1 + PROFILE] = torch.nn.functional.one_hot(bin_, PROFILE * d).view(PROFILE, d)
        profiles.append(model.score(other[:1], candidates[:1]))
    assert (profiles[0] - profiles[1]).abs().item() > 1e-4
    _count_is_ignored_and_rows_gather(model, memory, candidates, base)


def test_profile_rows_need_the_history_mean(spec: DataSpec) -> None:
    with pytest.raises(ConfigError, match="profile_rows needs history_mean"):
        build_model("cm", spec, {**TINY, "history_mean": False, "profile_rows": 2})
    with pytest.raises(ConfigError, match="profile_rows must be an integer >= 0"):
        build_model("cm", spec, {**MEAN_TINY, "profile_rows": -1})


def test_positive_slot_evidence_adds_the_softplus_of_the_slots_logit(spec: DataSpec) -> None:
    signed = _mean_model(spec)
    torch.manual_seed(0)
    positive = build_model("cm", spec, {**MEAN_TINY, "profile_rows": 0, "slot_evidence": "positive"}).eval()
    positive.load_state_dict(signed.state_dict())  # the same parameters: only the read-out differs
    memory, _, _, _ = signed.build_memory(_kjt([_history(9, seed=s) for s in range(4)], spec.item_category))
    candidates = signed.embeddings.lookup(torch.tensor([5, 6, 7, 8]))
    raw, mean = signed.reason.logit_parts(memory, candidates)
    slots, same_mean = positive.reason.logit_parts(memory, candidates)
    assert mean is not None and same_mean is not None
    assert_close(same_mean, mean)
    assert_close(slots, torch.nn.functional.softplus(raw))
    assert (slots > 0).all()
    assert_close(positive.reason(memory, candidates), slots + mean)
    with pytest.raises(ConfigError, match="slot_evidence must be one of"):
        build_model("cm", spec, {**MEAN_TINY, "slot_evidence": "unsigned"})


def test_prototype_assignments_sum_to_one_and_ignore_the_embedding_scale() -> None:
    torch.manual_seed(0)
    prototypes = Prototypes(dim=8, count=16)
    x = torch.randn(5, 3, 8) * 1e-3  # as small as freshly initialised item tables
    assignment = prototypes(x)
    assert assignment.shape == (5, 3, 16)
    assert_close(assignment.sum(dim=-1), torch.ones(5, 3))
    assert_close(prototypes(x * 1e4), assignment)  # cosine logits: the scale of x does not matter
    assert assignment.max(dim=-1).values.min() > 2.0 / 16  # sharp from the start, not uniform
    # The item nearest a prototype direction puts the most weight on that prototype.
    assert prototypes(prototypes.directions.detach()[3]).argmax().item() == 3
