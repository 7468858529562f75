"""The reason model R for recommendation (paper Appendix A.1): multi-hop attention over memory.

Shape letters: S samples, K slots, d_m slot width, d_x item width, d_model query width.

Two read-outs of the hops' final query q_C:

* ``linear`` (the paper's): ``logit = w^T q_C``. Candidate and memory meet only through the
  attention weights, so the logit cannot say "the memory holds what this candidate is".
* ``match`` (cmrec's default): an MLP (200, 80, PReLU) over ``[q_0; q_C; q_0 ⊙ q_C; q_0 − q_C;
  max_k s_k; logsumexp_k s_k]`` where ``s_k = (W_m q_0)·m_k / sqrt(d_m)`` is how strongly slot k
  matches the candidate; the max and the log-sum-exp say how much of the memory is about it, which
  a softmax-weighted average alone hides. Still memory and candidate only: serving is unchanged.

With ``history_mean`` the memory's last two rows are the mean of the whole history and its segment
count (`ContinualMemoryMachine`): the hops attend over the K slots only, and a second MLP over
``[h; e_C; h ⊙ e_C]`` (avg-pool's features, for the history mean h and the candidate embedding e_C)
adds its logit to the "match" logit. Added, not concatenated into one MLP: trained on next-segment
clicks, one MLP learns to let "not in the recent slots" veto everything, and the evidence of an
interest that only the mean still holds is lost (measured: docs/results.md, "Quality study"). `logit_parts`
returns the two addends, so that the model can also train the mean's logit alone
(``CMConfig.lambda_mean``).

With ``profile_rows`` the memory also holds the interest profile (a histogram of the whole
history over learned prototypes, `ContinualMemoryMachine`). The head assigns the candidate to the
same prototypes, ``a_C = a(e_C)`` (the machine's `Prototypes`, shared), and gives the mean's MLP
one more feature, ``log(bins * a_C · profile)``: how much more of the history falls on the
candidate's prototypes than on average (0 for a uniform profile). ``a_C · profile`` is the mean of
the kernel ``a(e_C) · a(x)`` over the history's items: the learned form of
"how often did this user click this kind of item", whatever long ago.

With ``count_buckets`` the memory also holds an exact count sketch (the share of the history
whose key, the category or the item, falls in each of C buckets): the mean's MLP gets the
candidate's share ``c`` as ``log(C c + 1/C)`` and ``c``, and the history's length as ``log(1 +
segments)``: the counting rule "how often did this user click the candidate's category" as a
feature, exact however long the history.

With ``recurrent`` the memory holds a GRU state over every click (`ContinualMemoryMachine`): a
third addend, GRU4REC's read-out ``MLP([h; e_C; W e_C ⊙ h])``, joins the slots' logit
(``recurrent_readout: own``), or ``[h; W e_C ⊙ h]`` join the mean's MLP features (``with_mean``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.common import MLP
from cmrec.errors import ConfigError
from cmrec.memory.machine import MemoryParts, Pending, count_rows, gather_rows, split_memory
from cmrec.memory.profile import Prototypes
from cmrec.memory.sketch import ITEM_HASHES, key_buckets, sketch_entries

Readout = Literal["linear", "match"]
READOUTS: tuple[str, ...] = ("linear", "match")
SLOT_EVIDENCE: tuple[str, ...] = ("signed", "positive")
RECURRENT_READOUTS: tuple[str, ...] = ("own", "beside_mean", "with_mean")


class _Hop(nn.Module):
    """One hop c: gamma_k = w_c^T tanh(W1 q_{c-1} + W2 m_k + b); e_c = sum_k softmax(gamma)_k m_k;
    q_c = W_q [e_c; q_{c-1}]."""

    def __init__(self, memory_dim: int, model_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(model_dim, model_dim, bias=False)  # W1^c
        self.slot = nn.Linear(memory_dim, model_dim)  # W2^c and b^c
        self.score = nn.Linear(model_dim, 1, bias=False)  # w^c
        self.next_query = nn.Linear(memory_dim + model_dim, model_dim, bias=False)  # W_q

    def forward(
        self,
        memory: torch.Tensor,
        query: torch.Tensor,
        rows: torch.Tensor | None = None,
        picked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """memory: (M, K, d_m); query: (S, d_model); rows: (S,) memory row of each query (None: M = S);
        picked: ``memory[rows]`` (S, K, d_m) when the caller has it already."""
        # Project each memory once, then gather: many queries (dense targets) share one memory.
        slots = self.slot(memory)  # (M, K, d_model)
        # `gather_rows` copies (unless there is one memory, a view): the copy can be overwritten.
        fresh = rows is not None and len(slots) > 1
        if rows is not None:
            slots = gather_rows(slots, rows)  # (S, K, d_model)
            picked = gather_rows(memory, rows) if picked is None else picked  # (S, K, d_m)
        else:
            picked = memory
        weights = self._weights(slots, query, in_place=fresh)  # (S, K, 1)
        evidence = torch.bmm(weights.transpose(1, 2), picked).squeeze(1)  # (S, d_m) e_c
        return self.next_query(torch.cat([evidence, query], dim=-1))  # (S, d_model) q_c

    def attention(self, projected_slots: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(S, K, d_model) projected slots (W2 m_k + b) and (S, d_model) queries -> (S, K, 1)
        softmax weights over the slots."""
        return self._weights(projected_slots, query, in_place=False)

    def _weights(self, projected_slots: torch.Tensor, query: torch.Tensor, in_place: bool) -> torch.Tensor:
        """`attention`; with `in_place`, the (S, K, d_model) hidden layer is computed in the buffer of
        `projected_slots` (a copy only this hop holds): one S x K x d_model tensor instead of three,
        which is most of the head's memory traffic with many dense targets."""
        query = self.query(query)[:, None, :]
        if in_place:
            hidden = projected_slots.add_(query).tanh_()
        else:
            hidden = torch.tanh(projected_slots + query)
        return torch.softmax(self.score(hidden), dim=1)  # (S, K, 1)


class ReasonHead(nn.Module):
    """Scores a candidate against a memory alone: C hops of attention, then a CTR logit.

    The query q_0 is the candidate's embedding (projected to d_model when d_x differs).

    Args:
        item_dim: d_x.
        memory_dim: d_m.
        model_dim: d_model.
        hops: C (the paper uses 1 for sequence recommendation).
        readout: "linear" (the paper's) or "match" (see the module docstring).
        mlp: hidden widths of the "match" read-out's MLP.
        history_mean: the memory ends with the history-mean rows ("match" read-out only; the
            mean is d_m wide and multiplies the candidate, so d_x must equal d_m).
        profile_rows: P interest-profile rows in the memory (with ``history_mean``; 0: none).
        prototypes: the machine's `Prototypes` (item -> its assignment to the P x d_m
            prototypes), shared so that the candidate is assigned to the prototypes the profile
            counts; a new one when None.
        slot_evidence: with ``history_mean``, "signed" (the slots' logit is added as it is) or
            "positive" (``softplus`` of it is added: the slots can only add evidence for a
            candidate, so a candidate the slots no longer hold is judged by the mean alone).
        slots: K (needed with ``recurrent`` or ``count_buckets``, to find the rows).
        recurrent: the memory has the recurrent row after the slots.
        count_buckets: C count-sketch entries in the memory (with ``history_mean``; 0: none).
        item_buckets: C_i entries of each item-sketch table (with ``history_mean``; 0: none),
            read as the candidate's count-min click count.
        segment_len: N (the item sketch's shares are per segment).
        recurrent_readout: "own" (the recurrent row's logit is added to the slots'), "beside_mean"
            (added to the mean's, so that the mean's own loss trains the two together) or
            "with_mean" (its ``[h; W e_C ⊙ h]`` join the mean's MLP features: one MLP weighs
            recency and counts).

    Example::

        head = ReasonHead(item_dim=64, memory_dim=64, model_dim=64, hops=1, readout="match")
        logits = head(memory, candidates)   # (S, K, 64), (S, 64) -> (S,)
    """

    def __init__(
        self,
        item_dim: int,
        memory_dim: int,
        model_dim: int,
        hops: int,
        readout: Readout = "linear",
        mlp: tuple[int, ...] = (200, 80),
        history_mean: bool = False,
        profile_rows: int = 0,
        slot_evidence: str = "signed",
        prototypes: Prototypes | None = None,
        slots: int | None = None,
        recurrent: bool = False,
        count_buckets: int = 0,
        recurrent_readout: str = "own",
        item_buckets: int = 0,
        segment_len: int = 1,
    ) -> None:
        super().__init__()
        if recurrent_readout not in RECURRENT_READOUTS:
            raise ConfigError(
                f"recurrent_readout must be one of {RECURRENT_READOUTS}, got {recurrent_readout!r}"
            )
        joint = recurrent and recurrent_readout == "with_mean"
        if recurrent and recurrent_readout != "own" and not history_mean:
            raise ConfigError(f"recurrent_readout {recurrent_readout!r} needs history_mean")
        self.recurrent = recurrent
        self.recurrent_beside_mean = recurrent and recurrent_readout == "beside_mean"
        if (recurrent or count_buckets or item_buckets) and slots is None:
            raise ConfigError("a recurrent row or a count sketch needs the number of slots")
        if (count_buckets or item_buckets) and not history_mean:
            raise ConfigError("count_buckets and item_buckets need history_mean")
        self.slots = slots
        self.count_buckets = count_buckets
        self.item_buckets = item_buckets
        self.segment_len = segment_len
        self.count_rows = count_rows(sketch_entries(count_buckets, item_buckets), memory_dim)
        if profile_rows and not history_mean:
            raise ConfigError("profile_rows needs history_mean")
        if slot_evidence not in SLOT_EVIDENCE:
            raise ConfigError(f"slot_evidence must be one of {SLOT_EVIDENCE}, got {slot_evidence!r}")
        self.positive_slots = history_mean and slot_evidence == "positive"
        if readout not in READOUTS:
            raise ConfigError(f"readout must be one of {READOUTS}, got {readout!r}")
        if history_mean and (readout != "match" or item_dim != memory_dim):
            raise ConfigError(
                "history_mean needs the 'match' read-out and item_dim == memory_dim, "
                f"got {readout!r}, {item_dim} and {memory_dim}"
            )
        self.readout = readout
        self.query_in: nn.Module = nn.Linear(item_dim, model_dim) if item_dim != model_dim else nn.Identity()
        self.hops = nn.ModuleList([_Hop(memory_dim, model_dim) for _ in range(hops)])
        self.output: nn.Module
        if readout == "linear":
            self.output = nn.Linear(model_dim, 1)
        else:
            self.match = nn.Linear(model_dim, memory_dim, bias=False)  # W_m
            self.output = MLP(4 * model_dim + 2, mlp)
        self.history_mean = history_mean
        self.profile_rows = profile_rows
        mean_features = 3 * memory_dim + (1 if profile_rows else 0) + (3 if count_buckets else 0)
        mean_features += 1 if item_buckets else 0
        mean_features += 2 * memory_dim if joint else 0
        self.mean_output: nn.Module | None = MLP(mean_features, mlp) if history_mean else None
        # The recurrent row's read-out: its own MLP (a third addend), or features of the mean's MLP.
        self.recurrent_output: nn.Module | None = (
            MLP(2 * memory_dim + item_dim, mlp) if recurrent and not joint else None
        )
        self.recurrent_target: nn.Module | None = (
            nn.Linear(item_dim, memory_dim, bias=False) if recurrent else None
        )
        # candidate -> its assignment to the profile's P x d_m prototypes.
        if profile_rows and prototypes is None:
            prototypes = Prototypes(item_dim, profile_rows * memory_dim)
        self.assign: Prototypes | None = prototypes if profile_rows else None

    def forward(
        self,
        memory: torch.Tensor,
        candidates: torch.Tensor,
        rows: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """memory: (S, R, d_m) (R = K, or K + 2 + P with the history mean and P profile rows);
        candidates: (S, d_x) -> (S,) logits; keys: (S,) the candidates' count-sketch keys (needed
        with ``count_buckets`` only).

        With `rows` (S,), memory is (M, R, d_m) and candidate i is scored against memory
        ``rows[i]``: the same logits as ``forward(memory[rows], candidates)``, cheaper when many
        candidates share a memory.
        """
        slot_logits, mean_logits = self.logit_parts(memory, candidates, rows, keys)
        return slot_logits if mean_logits is None else slot_logits + mean_logits

    @torch.no_grad()
    def slot_attention(self, memory: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """What each hop reads: (S, R, d_m) memories and (S, d_x) candidates -> (S, C, K) the
        attention weights over the K slots at each of the C hops (each row sums to 1)."""
        slots = self._split(memory).slots
        query = self.query_in(candidates)
        weights = []
        for hop in self.hops:
            assert isinstance(hop, _Hop)
            weights.append(hop.attention(hop.slot(slots), query)[..., 0])
            query = hop(slots, query)
        return torch.stack(weights, dim=1)

    def _split(self, memory: torch.Tensor) -> MemoryParts:
        return split_memory(
            memory, self.history_mean, self.profile_rows, self.slots, self.recurrent, self.count_rows
        )

    def logit_parts(
        self,
        memory: torch.Tensor,
        candidates: torch.Tensor,
        rows: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        pending: Pending | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward`'s two addends: the slots' logit (with the recurrent row's) and the history
        mean's (None without it).

        `pending` (one row per candidate) holds the clicks since the memory's last whole segment:
        they are counted into the running means read (history mean, profile, the candidate's
        count-sketch entries, the segment count) and the recurrent row after them is read, which
        equals scoring from ``machine.count_partial(memory, those clicks)``.
        """
        mean_logits: torch.Tensor | None = None
        parts_of = self._split(memory)
        memory = parts_of.slots  # (M, K, d_m)

        def rowed(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if rows is None else gather_rows(tensor, rows)

        segments = None if parts_of.segments is None else rowed(parts_of.segments)  # (S,)
        counted: torch.Tensor | None = None  # (S,) 1 where pending clicks make a new segment, else 0
        if pending is not None and segments is not None:
            counted = (pending.clicks > 0).to(segments.dtype)

        def with_pending(mean: torch.Tensor, pending_mean: torch.Tensor) -> torch.Tensor:
            """A running mean with the pending clicks counted as one more segment."""
            assert counted is not None and segments is not None
            step = counted / (segments + 1.0)
            return mean + (pending_mean - mean) * step.view(-1, *([1] * (mean.dim() - 1)))

        per_click: torch.Tensor | None = None  # (S, 1 + P, d_m) the pending clicks' mean values
        if pending is not None and pending.sums is not None:
            per_click = pending.sums / pending.clicks.clamp(min=1).to(pending.sums.dtype)[:, None, None]
        if self.mean_output is not None and parts_of.mean is not None:
            mean = rowed(parts_of.mean)  # (S, d_m)
            if per_click is not None:
                mean = with_pending(mean, per_click[:, 0])
            parts = [mean, candidates, mean * candidates]  # (S, 3 d_m)
            if self.assign is not None and parts_of.profile is not None:
                profile = rowed(parts_of.profile)  # (S, P d_m)
                if per_click is not None:
                    profile = with_pending(profile, per_click[:, 1:].flatten(1))
                share = (self.assign(candidates) * profile).sum(dim=-1)  # (S,)
                parts.append(torch.log(share.clamp(min=1e-6) * profile.shape[-1])[:, None])
            if self.count_rows and parts_of.counts is not None and segments is not None:
                if keys is None:
                    raise ConfigError("count_buckets: scoring needs the candidates' count-sketch keys")
                buckets = key_buckets(keys.long(), self.count_buckets, self.item_buckets)  # (S, Q)
                counts = parts_of.counts  # (M, entries)
                if rows is None:
                    shares = counts.gather(1, buckets)  # (S, Q)
                else:  # gather the candidates' entries only, not each candidate's whole sketch
                    flat = (rows[:, None] * counts.shape[1] + buckets).flatten()
                    shares = counts.reshape(-1).index_select(0, flat).view(buckets.shape)
                if pending is not None and pending.keys is not None:
                    # The pending clicks' share in each of the candidate's entries.
                    held = key_buckets(
                        pending.keys.long(), self.count_buckets, self.item_buckets
                    )  # (S, W, Q)
                    hits = ((held == buckets[:, None]) & pending.held[..., None]).sum(dim=1)  # (S, Q)
                    shares = with_pending(
                        shares, hits.to(shares.dtype) / pending.clicks.clamp(min=1)[:, None]
                    )
                seen = segments if counted is None else segments + counted  # (S,)
                seen = seen[:, None]
                if self.count_buckets:
                    own = shares[:, :1]  # (S, 1) the share of the candidate's category
                    buckets_count = float(self.count_buckets)
                    parts += [torch.log(own * buckets_count + 1.0 / buckets_count), own, torch.log1p(seen)]
                if self.item_buckets:
                    # The count-min estimate of the candidate's clicks (exact for whole segments).
                    item_share = shares[:, -ITEM_HASHES:].amin(dim=1, keepdim=True)
                    parts.append(torch.log1p(item_share * seen * self.segment_len))
            state = None
            if self.recurrent and self.recurrent_output is None and self.recurrent_target is not None:
                state = self._recurrent_of(parts_of, rowed, pending)  # (S, d_m)
                parts += [state, self.recurrent_target(candidates) * state]
            mean_logits = self.mean_output(torch.cat(parts, dim=-1)).squeeze(-1)
        recurrent_logits: torch.Tensor | None = None
        if self.recurrent_output is not None and self.recurrent_target is not None:
            state = self._recurrent_of(parts_of, rowed, pending)  # (S, d_m)
            features = torch.cat([state, candidates, self.recurrent_target(candidates) * state], dim=-1)
            recurrent_logits = self.recurrent_output(features).squeeze(-1)
        slot_logits = self._slot_logits(memory, candidates, rows)
        if recurrent_logits is not None and self.recurrent_beside_mean and mean_logits is not None:
            mean_logits = mean_logits + recurrent_logits
        elif recurrent_logits is not None:
            slot_logits = slot_logits + recurrent_logits
        return slot_logits, mean_logits

    @staticmethod
    def _recurrent_of(
        parts_of: MemoryParts, rowed: Callable[[torch.Tensor], torch.Tensor], pending: Pending | None
    ) -> torch.Tensor:
        """(S, d_m) the recurrent row each candidate reads: after the pending clicks, if given."""
        if pending is not None and pending.recurrent is not None:
            return pending.recurrent
        assert parts_of.recurrent is not None
        return rowed(parts_of.recurrent)

    def _slot_logits(
        self, memory: torch.Tensor, candidates: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """(M, K, d_m) slots -> (S,) the slots' logit."""
        first = query = self.query_in(candidates)  # (S, d_model) q_0
        picked = memory if rows is None else gather_rows(memory, rows)  # (S, K, d_m), gathered once
        for hop in self.hops:
            query = hop(memory, query, rows, picked)
        if self.readout == "linear":
            return self.output(query).squeeze(-1)
        scores = (
            torch.bmm(picked, self.match(first)[:, :, None]).squeeze(-1) * picked.shape[-1] ** -0.5
        )  # (S, K)
        strength = torch.stack([scores.amax(dim=1), torch.logsumexp(scores, dim=1)], dim=-1)  # (S, 2)
        features = torch.cat([first, query, first * query, first - query, strength], dim=-1)
        slot_logits = self.output(features).squeeze(-1)
        if self.positive_slots:
            slot_logits = functional.softplus(slot_logits)
        return slot_logits
