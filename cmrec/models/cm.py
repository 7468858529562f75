"""Continual Memory assembled: embeddings -> memory machine G -> reason head R (+ recall model H).

Shape letters: S samples, H histories in the batch, T segments, N items per segment, K slots,
R memory rows (`CMConfig.memory_rows`: K slots, and the recurrent, history-mean, profile and
count-sketch rows that are on), d_x item width, d_m slot width, P sampled items.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.data.batch import ITEM_KEY, Batch
from cmrec.data.jagged import segment_jagged
from cmrec.data.schema import CATEGORY_KEY
from cmrec.data.vocab import NUM_RESERVED
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.heads.reason import ReasonHead
from cmrec.heads.recent import RecentReader
from cmrec.memory.encoder import SegmentEncoder
from cmrec.memory.machine import ContinualMemoryMachine, Pending, Trajectory
from cmrec.memory.sketch import pack_keys
from cmrec.memory.update import MemoryUpdate
from cmrec.models.config import CMConfig
from cmrec.output import ModelNeeds, ModelOutput, RecModel
from cmrec.recall.model import HistoryRecall


class ContinualMemoryModel(RecModel):
    """CM for CTR prediction: ``L_cm = λ1·L_item + λ2·L_seq + λ3·L_r``.

    The training forward, incremental refresh (`write`) and scoring (`score`) share one memory
    update code path. The recall model exists only when λ1 or λ2 is positive and runs only in
    training mode: evaluation and scoring read nothing but the memory and the candidate.

    Args:
        config: hyper-parameters (`CMConfig`).
        embeddings: the item (and category) tables, of width ``config.item_dim``.

    Example::

        model = ContinualMemoryModel(CMConfig(), ItemEmbeddings(num_items=10_000, dim=64))
        out = model(batch)                        # ModelOutput(logits (S,), losses)
        memory = model.write(model.initial_memory(B), segment_items, mask)   # (B, R, d_m)
        logits = model.score(memory, candidates)  # (B,)
    """

    def __init__(self, config: CMConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        if embeddings.dim != config.item_dim:
            raise ConfigError(f"embeddings are {embeddings.dim} wide, CMConfig.item_dim is {config.item_dim}")
        self.config = config
        self.embeddings = embeddings
        self.machine = _memory_machine(config)
        self.reason = ReasonHead(
            config.item_dim,
            config.memory_dim,
            config.model_dim,
            config.hops,
            readout="match" if config.readout == "match" else "linear",
            history_mean=config.history_mean,
            profile_rows=config.profile_rows,
            slot_evidence=config.slot_evidence,
            prototypes=self.machine.prototypes,  # one W_p: the profile's and the candidate's
            slots=config.slots,
            recurrent=config.recurrent_state,
            count_buckets=config.count_buckets,
            recurrent_readout=config.recurrent_readout,
            item_buckets=config.item_buckets,
            segment_len=config.segment_len,
        )
        self.recent: RecentReader | None = (
            RecentReader(config.item_dim, config.segment_len)
            if config.recent_clicks and config.recent_reader
            else None
        )
        self.needs = ModelNeeds(
            dense_targets=config.dense_targets,
            memory_shape=(config.memory_rows + self.pending_rows, config.memory_dim),
        )
        self.recall = _history_recall(config) if config.uses_recall else None
        self.loss_weights = {"reason": config.lambda_reason}
        if config.lambda_item > 0:
            self.loss_weights["item"] = config.lambda_item
        if config.lambda_seq > 0:
            self.loss_weights["seq"] = config.lambda_seq
        if config.history_mean and config.lambda_mean > 0:
            self.loss_weights["mean"] = config.lambda_mean

    @property
    def write_len(self) -> int:
        """Clicks per `write` step (`IncrementalModel`): one N-click segment."""
        return self.config.segment_len

    @property
    def reads_recent(self) -> bool:
        """Whether `score` also reads the clicks since the last whole segment (`CMConfig.recent_clicks`):
        serving then passes a user's pending clicks instead of writing them into the memory."""
        return self.config.recent_clicks

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, rows, d_m) memory of users without history (`CMConfig.memory_rows`)."""
        return self.machine.initial_memory(batch_size)

    @property
    def pending_rows(self) -> int:
        """E rows a stored state keeps after the R memory rows (`CMConfig.recent_clicks` only):
        the pending clicks in the running form the head reads, so that scoring runs nothing over
        them. With ``history_mean``, the sum of their mean and profile values (1 + P rows); with
        ``recurrent_state``, the recurrent row after them (1 row). `hold` adds clicks to them,
        `write` resets them; their size does not grow with the clicks held."""
        if not self.reads_recent:
            return 0
        config = self.config
        return (1 + config.profile_rows if config.history_mean else 0) + (1 if config.recurrent_state else 0)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """(B, R + E, d_m) the stored state of users without history: the initial memory and no
        pending click (`pending_rows`; the memory alone when E = 0)."""
        return self._reset_pending(self.initial_memory(batch_size))

    def _reset_pending(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, R, d_m) memories -> (B, R + E, d_m) states holding no pending click."""
        if not self.pending_rows:
            return memory
        rows = [memory]
        if self.config.history_mean:
            rows.append(memory.new_zeros(len(memory), 1 + self.config.profile_rows, memory.shape[-1]))
        if self.config.recurrent_state:
            slots = self.config.slots
            rows.append(memory[:, slots : slots + 1])  # the recurrent row after no click: the memory's
        return torch.cat(rows, dim=1)

    def _split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, R, d_m) memories or (B, R + E, d_m) states -> the memories and the (B, E, d_m)
        pending rows (None for memories)."""
        rows = self.config.memory_rows
        if state.shape[1] == rows:
            return state, None
        if not self.pending_rows or state.shape[1] != rows + self.pending_rows:
            raise ConfigError(
                f"expected (B, {rows}, d_m) memories or (B, {rows + self.pending_rows}, d_m) stored states, "
                f"got {tuple(state.shape)}"
            )
        return state[:, :rows], state[:, rows:]

    @torch.no_grad()
    def hold(
        self,
        state: torch.Tensor,
        items: torch.Tensor,
        mask: torch.Tensor,
        categories: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add clicks to the pending ones of (B, R + E, d_m) stored states (`pending_rows`): the
        sums grow by the clicks' values and the recurrent row steps over them; the memory rows
        are unchanged. Holding clicks in several calls equals holding them in one.

        Args:
            state: (B, R + E, d_m) states.
            items: (B, W) item ids of the new pending clicks, oldest first (the held ones before them).
            mask: (B, W) True at real clicks (first in each row).
            categories: (B, W) category ids (None: each item's own).
        """
        memory, held = self._split_state(state)
        if held is None:
            raise ConfigError("hold needs stored states with the pending rows (`initial_state`)")
        config = self.config
        x = self.embeddings.lookup(items, categories)  # (B, W, d_x)
        base = memory
        if config.recurrent_state:  # continue the recurrent row from the clicks already held
            base = torch.cat([memory[:, : config.slots], held[:, -1:], memory[:, config.slots + 1 :]], dim=1)
        added = self.machine.pending(base, x, mask.bool())
        rows = []
        if added.sums is not None:
            rows.append(held[:, : 1 + config.profile_rows] + added.sums.to(held.dtype))
        if added.recurrent is not None:
            rows.append(added.recurrent.to(held.dtype)[:, None])
        return torch.cat([memory, *rows], dim=1)

    def _held_pending(
        self, memory: torch.Tensor, held: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None
    ) -> Pending:
        """`Pending` read from the stored pending rows, nothing run over the clicks; (U, W) `mask`
        says which are pending (none: the memory alone is read, as ``pending="ignore"`` asks)."""
        config = self.config
        clicks = mask.sum(dim=1)
        sums = held[:, : 1 + config.profile_rows] if config.history_mean else None
        recurrent = None
        if config.recurrent_state:
            recurrent = torch.where((clicks > 0)[:, None], held[:, -1], memory[:, config.slots])
        return Pending(clicks, mask, sums, keys, recurrent)

    def write(
        self,
        memory: torch.Tensor,
        segment_items: torch.Tensor,
        mask: torch.Tensor,
        segment_categories: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Write whole segments into memories; pure (returns a new tensor).

        Args:
            memory: (B, R, d_m).
            segment_items: (B, T, N) or (B, N) item ids, oldest first.
            mask: same shape, True at real items.
            segment_categories: category ids of the same shape; each item's own category when None.

        Returns:
            (B, R, d_m) memory after the segments. Given (B, R + E, d_m) stored states
            (`initial_state`), the states after them: the memory rows written and, for the rows
            with a click written, no pending click held (the caller holds what follows the last
            whole segment, `hold`).
        """
        if segment_items.dim() == 2:
            segment_items, mask = segment_items[:, None], mask[:, None]
            segment_categories = None if segment_categories is None else segment_categories[:, None]
        if segment_items.shape != mask.shape or segment_items.shape[-1] != self.config.segment_len:
            raise ConfigError(
                f"write expects (B, T, {self.config.segment_len}) items and an equal mask, "
                f"got {tuple(segment_items.shape)} and {tuple(mask.shape)}"
            )
        memory, held = self._split_state(memory)
        x = self.embeddings.lookup(segment_items, segment_categories)  # (B, T, N, d_x)
        written = self.machine(memory, x, mask.bool(), self.count_keys(segment_items, segment_categories))
        if held is None:
            return written
        touched = mask.flatten(1).any(dim=1)[:, None, None]  # (B, 1, 1) rows with a click written
        return torch.where(touched, self._reset_pending(written), torch.cat([written, held], dim=1))

    def count_keys(self, items: torch.Tensor, categories: torch.Tensor | None = None) -> torch.Tensor | None:
        """The count-sketch key of each item (`cmrec.memory.sketch.pack_keys`: the item id and the
        bucket of its category, given or the item's own, when the tables have categories, else of
        the item id); None without a sketch (`CMConfig.count_buckets`, `CMConfig.item_buckets`)."""
        if not (self.config.count_buckets or self.config.item_buckets):
            return None
        if self.embeddings.num_categories and categories is None:
            categories = self.embeddings.item_category[items.long()]
        elif not self.embeddings.num_categories:
            categories = None
        return pack_keys(items, categories, self.config.count_buckets)

    def score(
        self,
        memory: torch.Tensor,
        items: torch.Tensor,
        categories: torch.Tensor | None = None,
        recent: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(S, R, d_m) memories and (S,) candidate ids -> (S,) CTR logits.

        With `CMConfig.recent_clicks`, `recent` is each memory's user's clicks since the last whole
        segment: (S, W) item ids oldest first, an (S, W) mask (True at real clicks, first in each
        row) and their (S, W) category ids (None: each item's own); None means no recent clicks.

        With `rows` (S,), memory (and `recent`) hold U users, (U, R, d_m) and (U, W), and candidate i
        is scored against user ``rows[i]``: the same logits as ``score(memory[rows], items, ...,
        recent[rows])``, but the clicks since are counted once per user, not once per candidate.
        """
        candidates = self.embeddings.lookup(items, categories)
        keys = self.count_keys(items, categories)
        if not self.reads_recent:
            return self.reason(memory, candidates, rows, keys)
        if recent is None:
            empty = torch.zeros(len(memory), 0, dtype=torch.long, device=items.device)
            recent = (empty, empty.bool(), None)
        recent_items, recent_mask, recent_categories = recent
        mask = recent_mask.bool()
        recent_keys = self.count_keys(recent_items, recent_categories)
        memory, held = self._split_state(memory)
        clicks = None
        if held is None or self.recent is not None:
            clicks = self.embeddings.lookup(recent_items, recent_categories)  # (U, W, d_x)
        # The head counts the clicks into the running means as the partial segment they are and
        # reads the recurrent row after them; the slots are those of whole segments. A stored
        # state holds that running form (`pending_rows`); from a memory alone it is computed here
        # (once per user).
        if held is not None:
            pending = self._held_pending(memory, held, mask, recent_keys)
        else:
            assert clicks is not None
            pending = self.machine.pending(memory, clicks, mask, recent_keys)
        slot_logits, mean_logits = self.reason.logit_parts(
            memory, candidates, rows, keys, pending if rows is None else pending.select(rows)
        )
        logits = slot_logits if mean_logits is None else slot_logits + mean_logits
        if self.recent is None:
            return logits
        assert clicks is not None  # looked up above when a recent reader reads them
        if rows is not None:
            clicks, mask = clicks[rows], mask[rows]
        return logits + self.recent(clicks, mask, candidates)

    def build_memory(
        self, history: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Memories of jagged histories, plus the segment grid the recall model reads.

        Returns:
            memory (H, R, d_m), x (H, T, N, d_x), ids (H, T, N), mask (H, T, N).
        """
        states, x, ids, mask = self.build_trajectory(history)
        return states[:, -1], x, ids, mask

    def build_trajectory(
        self, history: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`build_memory` with the memory after every segment: states (H, T, R, d_m), x, ids, mask."""
        grid = self.history_grid(history)
        return grid.trajectory.states, grid.x, grid.ids, grid.mask

    def history_grid(self, history: KeyedJaggedTensor) -> HistoryGrid:
        """The histories cut into segments and written: everything training reads (`HistoryGrid`)."""
        x, ids, mask = self.segments(history)
        keys = self.key_grid(history)
        initial = self.initial_memory(x.shape[0])
        trajectory = self.machine.trajectory_parts(initial, x, mask, keys)
        return HistoryGrid(x, ids, mask, keys, initial, trajectory)

    def segments(self, history: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded histories cut into N-click segments: x (H, T, N, d_x), ids (H, T, N), mask (H, T, N)."""
        values, lengths = self.embeddings(history)  # (E, d_x), (H,)
        x, mask = segment_jagged(values, lengths, self.config.segment_len)
        ids, _ = segment_jagged(history[ITEM_KEY].values(), lengths, self.config.segment_len)
        return x, ids, mask

    def key_grid(self, history: KeyedJaggedTensor) -> torch.Tensor | None:
        """(H, T, N) count-sketch keys of the histories' clicks (the grid of `segments`), or None."""
        if not (self.config.count_buckets or self.config.item_buckets):
            return None
        lengths = history[ITEM_KEY].lengths()
        given = history[CATEGORY_KEY].values() if self.embeddings.num_categories else None
        keys = self.count_keys(history[ITEM_KEY].values(), given)
        assert keys is not None
        grid, _ = segment_jagged(keys, lengths, self.config.segment_len)
        return grid

    def reason_logits(self, grid: HistoryGrid, batch: Batch) -> torch.Tensor:
        """(S + D,) logits of the batch's samples, then of its dense targets (if any), from the
        written histories (`history_grid`); the first S are the samples'."""
        slot_logits, mean_logits = self.reason_logit_parts(grid, batch)
        return slot_logits if mean_logits is None else slot_logits + mean_logits

    def reason_logit_parts(self, grid: HistoryGrid, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`reason_logits` as the head's two addends (`ReasonHead.logit_parts`); the recent clicks'
        logit (`CMConfig.recent_clicks`) is part of the first.

        Every target is scored in one head call. Without `CMConfig.recent_clicks` a target reads
        the memory after the whole segments before it (or fewer, with a dense horizon). With it,
        the memory after its last whole segment plus the clicks since (the store's pending clicks
        in serving), which the head reads as a `Pending` taken from the trajectory: prefix sums of
        the clicks' values and the recurrent GRU's output at the click before the target, nothing
        run again per target.
        """
        states = grid.trajectory.states
        segments = states.shape[1]
        items, categories = batch.target_items, batch.target_categories
        targets = batch.history_targets
        dense = targets is not None and len(targets) > 0
        if not self.reads_recent:
            rows = batch.history_index * segments + segments - 1  # (S,) rows of states.flatten(0, 1)
            if dense:
                assert targets is not None
                # Dense supervision: the memory after the first `seen` whole segments (those before
                # the click, unless a horizon asks for an earlier memory).
                rows = torch.cat([rows, targets.history_row * segments + targets.seen - 1])
            memories = states.flatten(0, 1)
        else:
            # Memories after 0, 1, ..., T whole segments: a sample's is the one after its last whole
            # segment, and the clicks after it are read as recent, as serving reads pending clicks.
            memories = torch.cat([grid.initial[:, None], states], dim=1).flatten(0, 1)
            lengths = grid.mask.sum(dim=(1, 2))  # (H,)
            whole = lengths[batch.history_index] // self.config.segment_len  # (S,)
            rows = batch.history_index * (segments + 1) + whole
            rows_of, ends = [batch.history_index], [lengths[batch.history_index]]
            if dense:
                assert targets is not None
                rows = torch.cat([rows, targets.history_row * (segments + 1) + targets.seen])
                rows_of.append(targets.history_row)
                ends.append(targets.position)
        if dense:
            assert targets is not None
            items = torch.cat([items, targets.items])
            categories = None if categories is None else torch.cat([categories, _given(targets.categories)])
        candidates = self.embeddings.lookup(items, categories)  # (S + D, d_x)
        keys = self.count_keys(items, categories)
        if not self.reads_recent:
            return self.reason.logit_parts(memories, candidates, rows, keys)  # one call for all targets
        history_rows, history_ends = torch.cat(rows_of), torch.cat(ends)
        pending = self.machine.target_pending(
            grid.trajectory, grid.initial, grid.mask, grid.keys, history_rows, history_ends
        )
        slot_logits, mean_logits = self.reason.logit_parts(memories, candidates, rows, keys, pending)
        if self.recent is not None:
            recent, recent_mask = _recent_clicks(grid.x, history_rows, history_ends)
            slot_logits = slot_logits + self.recent(recent, recent_mask, candidates)
        return slot_logits, mean_logits

    def forward(self, batch: Batch) -> ModelOutput:
        grid = self.history_grid(batch.history)  # one pass per distinct history
        x, ids, mask = grid.x, grid.ids, grid.mask
        memory = self.machine.slots_of(grid.trajectory.states[:, -1])  # (H, K, d_m) what recall reads
        slot_logits, mean_logits = self.reason_logit_parts(grid, batch)
        all_logits = slot_logits if mean_logits is None else slot_logits + mean_logits
        logits = all_logits[: batch.num_samples]
        losses = {"reason": self._target_loss(all_logits, batch)}
        if mean_logits is not None and self.config.lambda_mean > 0 and self.training:
            losses["mean"] = self._target_loss(mean_logits, batch)  # the mean's logit alone
        if self.recall is not None and self.training:
            sampled_ids = torch.randint(
                NUM_RESERVED, self.embeddings.num_items, (self.config.sampled_items,), device=logits.device
            )
            sampled = self.embeddings.lookup(sampled_ids)  # (P, d_x)
            if not self.config.recall_trains_embeddings:  # the recall losses reach the tables via M only
                x, sampled = x.detach(), sampled.detach()
            losses.update(self.recall(memory, x, ids, mask, sampled_ids, sampled))
        return ModelOutput(logits=logits, losses=losses, weights=dict(self.loss_weights))

    def _target_loss(self, all_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        dense = all_logits[batch.num_samples :] if batch.history_targets is not None else None
        return batch.target_loss(all_logits[: batch.num_samples], dense, self.config.sample_share)


class HistoryGrid(NamedTuple):
    """Jagged histories cut into (H, T, N) segment grids and written (`history_grid`)."""

    x: torch.Tensor  # (H, T, N, d_x) the clicks' embeddings
    ids: torch.Tensor  # (H, T, N) their item ids
    mask: torch.Tensor  # (H, T, N) True at real clicks
    keys: torch.Tensor | None  # (H, T, N) their count-sketch keys (None without a sketch)
    initial: torch.Tensor  # (H, R, d_m) the memories the writes started from
    trajectory: Trajectory  # the memory after every segment, and per-click values


def _given(tensor: torch.Tensor | None) -> torch.Tensor:
    if tensor is None:
        raise ConfigError("the samples have categories but the dense targets have none")
    return tensor


def _memory_machine(config: CMConfig) -> ContinualMemoryMachine:
    """The segment encoder and memory update of `config`, as one memory machine."""
    encoder = SegmentEncoder(
        config.item_dim,
        config.heads,
        config.encoder_layers,
        config.ffn_dim,
        config.dropout,
        config.segment_len,
    )
    update = MemoryUpdate(
        config.memory_dim,
        config.item_dim,
        config.model_dim,
        config.subspaces,
        config.retention_init,
        config.slots,
        config.slowest_write_rate,
    )
    return ContinualMemoryMachine(
        encoder,
        update,
        config.slots,
        config.memory_dim,
        history_mean=config.history_mean,
        profile_rows=config.profile_rows,
        count_buckets=config.count_buckets,
        recurrent=config.recurrent_state,
        item_buckets=config.item_buckets,
    )


def _history_recall(config: CMConfig) -> HistoryRecall:
    """The history recall model of `config` with the losses its weights enable."""
    return HistoryRecall(
        config.item_dim,
        config.memory_dim,
        config.heads,
        config.decoder_layers,
        config.ffn_dim,
        config.dropout,
        config.segment_len,
        config.fragments,
        config.mask_ratio,
        config.replace_ratio,
        item_loss=config.lambda_item > 0,
        seq_loss=config.lambda_seq > 0,
    )


def _recent_clicks(
    x: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicks of history ``rows[j]`` since its last whole segment before index ``ends[j]``:
    (J, N, ...) from the segment grid x (H, T, N, ...) (features or ids), and the (J, N) mask of
    the real ones (the first ``ends[j] % N``): the clicks a store keeps pending for a user with
    ``ends[j]`` clicks."""
    segment_len = x.shape[2]
    grid = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], dim=1)  # one more, empty, segment
    segment = ends // segment_len  # (J,) the segment the clicks are in (T when there are none)
    held = (ends % segment_len)[:, None] > torch.arange(segment_len, device=x.device)  # (J, N)
    flat = grid.flatten(0, 1).index_select(0, rows * grid.shape[1] + segment)  # deterministic backward
    return flat, held
