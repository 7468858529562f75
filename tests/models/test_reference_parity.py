"""The reason head and the recall losses against plain loop implementations (forward and
gradients): one sample, one slot, one masked item at a time, written from the paper's formulas."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional

from cmrec.heads.reason import ReasonHead
from cmrec.recall.fragments import sample_fragments
from cmrec.recall.model import item_loss, seq_loss


def _reference_logit(head: ReasonHead, memory: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """One sample: memory (R, d_m) in the layout [K slots; mean; P profile rows; count]."""
    profile_rows = head.profile_rows
    if head.history_mean:
        slots = memory[: memory.shape[0] - 2 - profile_rows]
        mean = memory[slots.shape[0]]
        profile = memory[slots.shape[0] + 1 : slots.shape[0] + 1 + profile_rows].reshape(-1)
    else:
        slots = memory
    first = query = head.query_in(candidate[None])[0]
    for hop in head.hops:
        gammas = [
            hop.score(torch.tanh(hop.query(query) + hop.slot(slots[k])))[0] for k in range(slots.shape[0])
        ]
        weights = torch.softmax(torch.stack(gammas), dim=0)
        evidence = sum(weights[k] * slots[k] for k in range(slots.shape[0]))
        query = hop.next_query(torch.cat([evidence, query]))
    if head.readout == "linear":
        logit = head.output(query)[0]
    else:
        key = head.match(first)
        scores = torch.stack(
            [(slots[k] * key).sum() / math.sqrt(slots.shape[1]) for k in range(slots.shape[0])]
        )
        strength = torch.stack([scores.max(), torch.log(torch.exp(scores).sum())])
        features = torch.cat([first, query, first * query, first - query, strength])
        logit = head.output(features[None])[0, 0]
    if not head.history_mean:
        return logit
    parts = [mean, candidate, mean * candidate]
    if profile_rows:
        assert head.assign is not None
        share = (head.assign(candidate[None])[0] * profile).sum()
        parts.append(torch.log(share.clamp(min=1e-6) * profile.numel())[None])
    assert head.mean_output is not None
    return logit + head.mean_output(torch.cat(parts)[None])[0, 0]


def _grads(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, inputs))


@pytest.mark.parametrize(
    ("settings", "rows"),
    [
        ({"item_dim": 6, "memory_dim": 5, "model_dim": 8, "hops": 2}, 5),  # the paper's linear read-out
        ({"item_dim": 8, "memory_dim": 8, "model_dim": 8, "hops": 1, "readout": "match"}, 5),
        (
            {
                "item_dim": 8,
                "memory_dim": 8,
                "model_dim": 8,
                "hops": 1,
                "readout": "match",
                "history_mean": True,
            },
            5 + 2,
        ),
        (
            {
                **{"item_dim": 8, "memory_dim": 8, "model_dim": 8, "hops": 1, "readout": "match"},
                **{"history_mean": True, "profile_rows": 2},
            },
            5 + 2 + 2,
        ),
    ],
)
def test_reason_head_equals_a_loop_over_samples_and_slots(settings: dict[str, object], rows: int) -> None:
    torch.manual_seed(0)
    head = ReasonHead(**settings, mlp=(12, 6)).double()
    memory = torch.randn(3, rows, int(settings["memory_dim"]), dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(4, int(settings["item_dim"]), dtype=torch.float64, requires_grad=True)
    if settings.get("history_mean"):
        with torch.no_grad():  # a real count, and a profile that is a distribution as the machine keeps it
            memory[:, -1] = 0.0
            memory[:, -1, 0] = 7.0
            if settings.get("profile_rows"):
                profile = torch.softmax(torch.randn(3, 2 * 8, dtype=torch.float64), dim=-1)
                memory[:, -3:-1] = profile.view(3, 2, 8)
    which = torch.tensor([0, 2, 2, 1])  # candidate i is scored against memory which[i]
    params = [p for p in head.parameters() if p.requires_grad]

    fast = head(memory, candidates, which)
    slow = torch.stack([_reference_logit(head, memory[which[i]], candidates[i]) for i in range(4)])
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(head(memory[which], candidates), fast, rtol=1e-10, atol=1e-10)
    weights = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    for got, want in zip(
        _grads((fast * weights).sum(), [memory, candidates, *params]),
        _grads((slow * weights).sum(), [memory, candidates, *params]),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.fixture
def recall_case() -> dict[str, Any]:
    """Decoder outputs and truths of 3 histories, 2 fragments of 4 items; the second history empty."""
    generator = torch.Generator().manual_seed(5)
    mask = torch.ones(3, 3, 4, dtype=torch.bool)
    mask[1] = False  # no real item: no recall loss
    mask[2, 2, 1:] = False
    frag = sample_fragments(mask, fragments=2, mask_ratio=0.5, replace_ratio=0.5, generator=generator)
    dim = 5
    return {
        "frag": frag,
        "decoded": torch.randn(3, 2, 2, 5, dim, dtype=torch.float64, generator=generator, requires_grad=True),
        "positive": torch.randn(3, 2, 4, dim, dtype=torch.float64, generator=generator, requires_grad=True),
        "positive_ids": torch.randint(2, 9, (3, 2, 4), generator=generator),
        "sampled_ids": torch.tensor([2, 3, 4, 5, 6, 7]),  # overlaps the truths: those are left out
        "sampled": torch.randn(6, dim, dtype=torch.float64, generator=generator, requires_grad=True),
        "scores": torch.randn(3, 2, 2, dtype=torch.float64, generator=generator, requires_grad=True),
    }


def test_item_loss_equals_a_loop_over_masked_items(recall_case: dict[str, Any]) -> None:
    c = recall_case
    frag = c["frag"]
    fast = item_loss(c["decoded"], c["positive"], c["positive_ids"], frag, c["sampled_ids"], c["sampled"])
    terms = []
    histories, fragments, length = frag.masked.shape
    for h in range(histories):
        for b in range(fragments):
            for n in range(length):
                if not (frag.masked[h, b, n] and frag.usable[h]):
                    continue
                out, truth = c["decoded"][h, 0, b, 1 + n], c["positive"][h, b, n]
                logits = [out @ truth]
                for p in range(len(c["sampled_ids"])):
                    if (
                        c["sampled_ids"][p] != c["positive_ids"][h, b, n]
                    ):  # a sample equal to the truth is no negative
                        logits.append(out @ c["sampled"][p])
                stacked = torch.stack(logits)
                terms.append(-(stacked[0] - torch.log(torch.exp(stacked).sum())))
    assert len(terms) >= 4  # the case masks items in both usable histories
    slow = torch.stack(terms).mean()
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    inputs = [c["decoded"], c["positive"], c["sampled"]]
    for got, want in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_seq_loss_equals_a_loop_over_fragment_pairs(recall_case: dict[str, Any]) -> None:
    c = recall_case
    frag, scores = c["frag"], c["scores"]
    fast = seq_loss(scores, frag)
    terms = []
    for h in range(scores.shape[0]):
        if not frag.usable[h]:
            continue
        for b in range(scores.shape[2]):
            real, corrupted = scores[h, 0, b], scores[h, 1, b]
            terms.append(-functional.logsigmoid(real))  # the fragment: label 1
            terms.append(-functional.logsigmoid(-corrupted))  # its corrupted copy: label 0
    assert len(terms) == 2 * 2 * 2  # two usable histories, two fragments, two copies
    slow = torch.stack(terms).mean()
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grads(fast, [scores])[0], _grads(slow, [scores])[0], rtol=1e-9, atol=1e-12)


def test_slot_attention_is_what_the_hops_read() -> None:
    torch.manual_seed(1)
    head = ReasonHead(
        item_dim=8, memory_dim=8, model_dim=8, hops=2, readout="match", history_mean=True
    ).double()
    memory = torch.randn(3, 5 + 2, 8, dtype=torch.float64)
    candidates = torch.randn(3, 8, dtype=torch.float64)
    weights = head.slot_attention(memory, candidates)
    assert weights.shape == (3, 2, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    for i in range(3):  # the first hop's weights, from the loop reference's formula
        hop, slots = head.hops[0], memory[i, :5]
        gammas = torch.stack(
            [hop.score(torch.tanh(hop.query(candidates[i]) + hop.slot(slots[k])))[0] for k in range(5)]
        )
        torch.testing.assert_close(weights[i, 0], torch.softmax(gammas, dim=0).detach())
