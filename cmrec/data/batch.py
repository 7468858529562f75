"""Batches for every model: histories as a TorchRec `KeyedJaggedTensor`, plus targets and labels.

Shape letters: S samples in the batch, H distinct histories in the batch (H <= S), E history events
in the batch.

A batch stores each distinct (sequence, prefix) history once; ``history_index`` maps each sample to
its history row. The positive and the negative of one target share one history, so a model builds
that user's memory once and scores both targets from it.

Dense supervision (`DenseTargets`, training only): the clicks *inside* each history are labelled
targets too. A model already computes its state after every segment of a history on the way to the
final one, so the state after segment t can score the clicks of segment t + 1 against sampled
negatives: hundreds of labelled pairs per user for one encoder pass, where XLong gives one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Sampler
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.data.samples import Histories, NegativeSampler, Samples, concat_ranges, interleave
from cmrec.data.schema import CATEGORY_KEY, ITEM_KEY
from cmrec.data.vocab import NUM_RESERVED
from cmrec.errors import ConfigError


@dataclass
class HistoryTargets:
    """Labelled targets inside the batch's histories (dense supervision).

    Target j is the click at index ``position[j]`` of history row ``history_row[j]`` (label 1), or a
    sampled item the user did not click there (label 0); positives and negatives alternate like the
    sample rows. A model scores it from its state after events ``[0, position)`` of that history;
    a segment-memory model from its memory after the first ``seen[j]`` whole segments: the
    ``position // N`` segments before the click, or fewer with a `DenseTargets` horizon. No target
    lies in the first segment (``position >= segment_len``).

    Args:
        history_row: (D,) int64 row of `Batch.history`.
        position: (D,) int64 index of the click inside that history.
        seen: (D,) int64 whole segments of that history the scoring memory has seen, in
            [1, position // N].
        items: (D,) int64 candidate item index.
        categories: (D,) int64 candidate category index, or None without categories.
        labels: (D,) float32.
    """

    history_row: torch.Tensor
    position: torch.Tensor
    seen: torch.Tensor
    items: torch.Tensor
    categories: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HistoryTargets:
        return HistoryTargets(
            history_row=self.history_row.to(device, non_blocking=non_blocking),
            position=self.position.to(device, non_blocking=non_blocking),
            seen=self.seen.to(device, non_blocking=non_blocking),
            items=self.items.to(device, non_blocking=non_blocking),
            categories=None
            if self.categories is None
            else self.categories.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
        )


@dataclass
class Batch:
    """One batch of samples.

    Args:
        history: KJT with keys ``("item",)`` or ``("item", "category")``; H rows, each a history
            in time order (oldest first), at most ``max_len`` long; E values per key.
        history_index: (S,) int64, the `history` row of each sample.
        target_items: (S,) int64 item index of each candidate.
        target_categories: (S,) int64 category index of each candidate, or None.
        labels: (S,) float32 click labels.
        user_ids: (S,) int64 user index of each sample (for GAUC and the memory store).
        history_negatives: KJT like `history` (same keys and lengths) holding, for every history
            event, a sampled item that the user did not click there (and its category); only
            when the loader was asked for them (DIEN's auxiliary loss), else None.
        history_targets: labelled clicks inside the histories (`HistoryTargets`), only when the
            loader was asked for dense targets (training loaders of models that declare them).
    """

    history: KeyedJaggedTensor
    history_index: torch.Tensor
    target_items: torch.Tensor
    target_categories: torch.Tensor | None
    labels: torch.Tensor
    user_ids: torch.Tensor
    history_negatives: KeyedJaggedTensor | None = None
    history_targets: HistoryTargets | None = None

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_histories(self) -> int:
        return int(self.history.stride())

    def target_loss(
        self, logits: torch.Tensor, dense_logits: torch.Tensor | None = None, sample_share: float = 0.0
    ) -> torch.Tensor:
        """Binary cross-entropy over the samples (S,) and, with dense supervision, the dense
        targets (D,).

        With ``sample_share`` 0 every labelled target counts once, so the samples (the targets at
        the end of each history, where validation and test targets lie) weigh by their number:
        2 of 242 pairs per user at L = 500 with 5 dense targets per segment. A share s in (0, 1)
        gives the samples' mean loss the weight s and the dense targets' mean loss 1 - s.
        """
        bce = functional.binary_cross_entropy_with_logits
        if dense_logits is None:
            return bce(logits, self.labels)
        assert self.history_targets is not None
        dense_labels = self.history_targets.labels
        if sample_share == 0:
            return bce(torch.cat([logits, dense_logits]), torch.cat([self.labels, dense_labels]))
        sample_loss = bce(logits, self.labels)
        if not len(dense_logits):  # histories too short for a dense target
            return sample_loss
        return sample_share * sample_loss + (1.0 - sample_share) * bce(dense_logits, dense_labels)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            history=self.history.to(torch.device(device), non_blocking=non_blocking),
            history_index=self.history_index.to(device, non_blocking=non_blocking),
            target_items=self.target_items.to(device, non_blocking=non_blocking),
            target_categories=move(self.target_categories),
            labels=self.labels.to(device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device, non_blocking=non_blocking),
            history_negatives=(
                None
                if self.history_negatives is None
                else self.history_negatives.to(torch.device(device), non_blocking=non_blocking)
            ),
            history_targets=(
                None if self.history_targets is None else self.history_targets.to(device, non_blocking)
            ),
        )


@dataclass(frozen=True)
class HistoryNegatives:
    """Asks a loader for one sampled negative item per history event (DIEN's auxiliary loss).

    Negatives are uniform over known items (index >= 2), never the event's own item; their
    category is the item's (`item_category`), when the data has categories.

    Args:
        num_items: rows of the item vocabulary.
        item_category: (num_items,) category index per item, or None without categories.
        seed: seeds the draws; a loader's batches are then reproducible.
    """

    num_items: int
    item_category: np.ndarray | None = None
    seed: int = 0


@dataclass(frozen=True)
class DenseTargets:
    """What a model asks of its training loader for dense supervision (see `HistoryTargets`).

    The clicks of every segment but the first of each training history become targets, each with
    one sampled negative. A model declares this (its config's settings), the trainer passes it on.

    Args:
        segment_len: N; targets start at the second segment and are drawn per segment.
        per_segment: clicks drawn (without replacement) from each segment; 0 takes every click.
        last_segments: only the last m segments of each history give targets; 0 takes all.
        horizon: how far back the memory that scores a click of segment s may lie: it has seen
            s - u segments, u drawn uniformly from [0, min(horizon, s) - 1]; 1 (the default) is
            always the memory just before the click's segment, 0 any earlier memory. Models that
            score from their state after every click (avg-pool, GRU4REC) ignore it.
    """

    segment_len: int = 20
    per_segment: int = 0
    last_segments: int = 0
    horizon: int = 1

    def __post_init__(self) -> None:
        if self.segment_len < 1 or self.per_segment < 0 or self.last_segments < 0 or self.horizon < 0:
            raise ConfigError(
                "DenseTargets needs segment_len >= 1 and per_segment, last_segments, horizon >= 0, got "
                f"{self.segment_len}, {self.per_segment}, {self.last_segments}, {self.horizon}"
            )

    @classmethod
    def request(
        cls, segment_len: int, per_segment: int, last_segments: int, horizon: int = 1
    ) -> DenseTargets | None:
        """A model config's dense settings as a request: None when ``per_segment`` is 0 (off);
        ``per_segment >= segment_len`` takes every click."""
        if per_segment == 0:
            return None
        return cls(segment_len, per_segment if per_segment < segment_len else 0, last_segments, horizon)


@dataclass(frozen=True)
class DenseSupervision:
    """A training loader's dense targets: the model's request plus the data's negative sampler.

    Args:
        targets: the model's `DenseTargets`.
        sampler: draws the negatives (uniform or by popularity, as the data's split).
        item_category: (num_items,) category index per item, for the negatives' categories.
        seed: seeds target and negative draws; a loader's batches are then reproducible.
    """

    targets: DenseTargets
    sampler: NegativeSampler
    item_category: np.ndarray | None = None
    seed: int = 0


class Collator:
    """Builds a `Batch` from sample row indices; use as a DataLoader's ``collate_fn``.

    Args:
        histories: the stored histories.
        samples: the sample rows the indices refer to.
        max_len: keep only the last `max_len` events of each history.
        negatives: also sample one negative item per history event (see `HistoryNegatives`).
        dense: also label clicks inside the histories (see `DenseSupervision`).
    """

    def __init__(
        self,
        histories: Histories,
        samples: Samples,
        max_len: int,
        negatives: HistoryNegatives | None = None,
        dense: DenseSupervision | None = None,
    ) -> None:
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        self.histories = histories
        self.samples = samples
        self.max_len = max_len
        self.negatives = negatives
        self.dense = dense
        self._rng = np.random.default_rng(negatives.seed if negatives else 0)
        self._dense_rng = np.random.default_rng(dense.seed if dense else 0)

    def __call__(self, indices: Sequence[int] | np.ndarray) -> Batch:
        rows = np.asarray(indices, dtype=np.int64)
        seq = self.samples.sequence[rows]
        prefix = self.samples.prefix_len[rows]
        # One history per distinct (sequence, prefix), in order of first appearance.
        keys = seq * (int(prefix.max(initial=0)) + 1) + prefix
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        history_index = rank[inverse]
        h_seq, h_prefix = seq[first[order]], prefix[first[order]]

        stop = self.histories.offsets[h_seq] + h_prefix
        start = np.maximum(self.histories.offsets[h_seq], stop - self.max_len)
        lengths = stop - start  # (H,)
        positions = concat_ranges(start, lengths)  # (E,) flat event positions of all H histories

        keys_out = [ITEM_KEY]
        values = [self.histories.items[positions]]
        if self.histories.categories is not None:
            keys_out.append(CATEGORY_KEY)
            values.append(self.histories.categories[positions])
        kjt = _jagged(keys_out, values, lengths)
        negatives_kjt = None
        if self.negatives is not None:
            negatives_kjt = _jagged(keys_out, self._sample_negatives(values[0], len(keys_out) > 1), lengths)
        categories = self.samples.target_category
        history_targets = None
        if self.dense is not None:
            history_targets = self._history_targets(values, lengths)
        return Batch(
            history=kjt,
            history_index=torch.from_numpy(history_index.astype(np.int64)),
            target_items=torch.from_numpy(self.samples.target_item[rows].astype(np.int64)),
            target_categories=(
                None if categories is None else torch.from_numpy(categories[rows].astype(np.int64))
            ),
            labels=torch.from_numpy(self.samples.label[rows].astype(np.float32)),
            user_ids=torch.from_numpy(self.histories.users[seq].astype(np.int64)),
            history_negatives=negatives_kjt,
            history_targets=history_targets,
        )

    def _history_targets(self, values: list[np.ndarray], lengths: np.ndarray) -> HistoryTargets:
        """Clicks of the second and later segments of each history, with one negative each."""
        assert self.dense is not None
        spec, rng = self.dense.targets, self._dense_rng
        n = spec.segment_len
        segments = -(-lengths // n)  # (H,) T_h, the last one possibly partial
        first = np.maximum(1, segments - spec.last_segments) if spec.last_segments else np.ones_like(segments)
        begin = np.minimum(first * n, lengths)  # (H,) first target position of each history
        count = lengths - begin
        row = np.repeat(np.arange(len(lengths)), count)  # (D',) candidate targets
        position = concat_ranges(begin, count)
        flat = (np.cumsum(lengths) - lengths)[row] + position  # index into the batch's flat events
        items = values[0][flat].astype(np.int64)
        keep = items >= NUM_RESERVED  # never padding or out-of-vocabulary clicks
        if spec.per_segment:
            group = row * (int(segments.max(initial=0)) + 1) + position // n  # (history, segment)
            order = np.lexsort((rng.random(len(group)), group))
            starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
            rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            chosen = np.zeros(len(group), dtype=bool)
            chosen[order[rank < spec.per_segment]] = True
            keep &= chosen
        row, position, flat, items = row[keep], position[keep], flat[keep], items[keep]
        seen = position // n  # the segments before the click's own
        if spec.horizon != 1:
            reach = seen if spec.horizon == 0 else np.minimum(seen, spec.horizon)
            seen = seen - np.floor(rng.random(len(seen)) * reach).astype(np.int64)
        negatives = self.dense.sampler.sample(items, rng)
        pair_items = interleave(items, negatives)
        pair_categories = None
        if len(values) > 1:
            if self.dense.item_category is None:
                raise ConfigError("dense targets of data with categories need item_category")
            own = values[1][flat].astype(np.int64)
            pair_categories = interleave(own, self.dense.item_category[negatives])
        return HistoryTargets(
            history_row=torch.from_numpy(np.repeat(row, 2).astype(np.int64)),
            position=torch.from_numpy(np.repeat(position, 2).astype(np.int64)),
            seen=torch.from_numpy(np.repeat(seen, 2).astype(np.int64)),
            items=torch.from_numpy(pair_items),
            categories=None if pair_categories is None else torch.from_numpy(pair_categories),
            labels=torch.from_numpy(np.tile(np.array([1.0, 0.0], dtype=np.float32), len(items))),
        )

    def _sample_negatives(self, items: np.ndarray, with_categories: bool) -> list[np.ndarray]:
        assert self.negatives is not None
        spec = self.negatives
        drawn = self._rng.integers(NUM_RESERVED, spec.num_items, size=len(items))
        while (clash := drawn == items).any():
            drawn[clash] = self._rng.integers(NUM_RESERVED, spec.num_items, size=int(clash.sum()))
        if not with_categories:
            return [drawn]
        if spec.item_category is None:
            raise ConfigError("history negatives of data with categories need item_category")
        return [drawn, spec.item_category[drawn]]


def _jagged(keys: list[str], values: list[np.ndarray], lengths: np.ndarray) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
        lengths=torch.from_numpy(np.tile(lengths, len(keys)).astype(np.int64)),
    )


class PairBatchSampler(Sampler[list[int]]):
    """Yields lists of sample rows that keep each target's positive and negative together.

    Rows 2i and 2i + 1 (a target's pair) always land in the same batch, so they share one history
    pass. With `shuffle`, pairs are permuted by a generator seeded with ``seed + epoch`` (call
    `set_epoch`), so a run is reproducible.

    Args:
        num_samples: rows in the `Samples` (even).
        batch_size: samples per batch (even).
        shuffle: permute the pairs each epoch.
        seed: base seed of the permutation.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        _check_batch_size(batch_size)
        if num_samples % 2:
            raise ConfigError(f"samples come in positive/negative pairs; got {num_samples} rows")
        self.num_pairs = num_samples // 2
        self.pairs_per_batch = batch_size // 2
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_pairs // self.pairs_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        pairs = np.arange(self.num_pairs)
        if self.shuffle:
            pairs = np.random.default_rng(self.seed + self.epoch).permutation(self.num_pairs)
        for begin in range(0, self.num_pairs, self.pairs_per_batch):
            yield _pair_rows(pairs[begin : begin + self.pairs_per_batch])


class UserShardBatchSampler(Sampler[list[int]]):
    """`PairBatchSampler` for one process of several: the pairs of this rank's users only.

    Users are dealt to ranks once, by sample count (the largest first, each to the least-loaded
    rank; ties by user index), so every sample of a user stays on one rank and the ranks get
    near-equal shares. Every rank yields the same number of batches (collective operations run in
    each step): a rank with fewer wraps around to its own first batches. `rows()` lists the rows
    in yield order, repeats included; evaluation keeps each row once.

    Args:
        pair_users: (P,) user index of each pair (rows 2i, 2i + 1).
        batch_size: samples per batch (even).
        rank, world_size: this process and the number of processes.
        shuffle: permute this rank's pairs each epoch (``seed + epoch``, see `set_epoch`).
        seed: base seed of the permutation.
    """

    def __init__(
        self,
        pair_users: np.ndarray,
        batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        _check_batch_size(batch_size)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in a world of {world_size} processes")
        owner = assign_users(pair_users, world_size)
        pairs_of = [np.flatnonzero(owner[pair_users] == r) for r in range(world_size)]
        if min(len(p) for p in pairs_of) == 0:
            raise ConfigError(
                f"{len(np.unique(pair_users))} users cannot give each of {world_size} processes a share"
            )
        self.pairs_per_batch = batch_size // 2
        self.pairs = pairs_of[rank]
        self.num_batches = max(-(-len(p) // self.pairs_per_batch) for p in pairs_of)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        pairs = self.pairs
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank])
            pairs = pairs[rng.permutation(len(pairs))]
        own = [pairs[b : b + self.pairs_per_batch] for b in range(0, len(pairs), self.pairs_per_batch)]
        for index in range(self.num_batches):
            yield _pair_rows(own[index % len(own)])

    def rows(self) -> np.ndarray:
        """Sample rows in the order this epoch yields them (wrapped-around repeats included)."""
        return np.asarray([row for batch in self for row in batch], dtype=np.int64)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 2 or batch_size % 2:
        raise ConfigError(f"batch_size must be an even number >= 2, got {batch_size}")


def _pair_rows(pairs: np.ndarray) -> list[int]:
    """Sample rows of pairs, each pair's positive and negative side by side: 2i, 2i + 1."""
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1).tolist()


def assign_users(pair_users: np.ndarray, world_size: int) -> np.ndarray:
    """Rank of each user index (0 for users without pairs): largest pair count first, to the least loaded."""
    counts = np.bincount(pair_users, minlength=int(pair_users.max(initial=0)) + 1)
    owner = np.zeros(len(counts), dtype=np.int64)
    load = [0] * world_size
    for user in np.lexsort((np.arange(len(counts)), -counts)):
        if counts[user] == 0:
            break
        target = min(range(world_size), key=lambda r: (load[r], r))
        owner[user] = target
        load[target] += int(counts[user])
    return owner


def make_loader(
    histories: Histories,
    samples: Samples,
    batch_size: int,
    max_len: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    negatives: HistoryNegatives | None = None,
    shard: tuple[int, int] | None = None,
    dense: DenseSupervision | None = None,
) -> DataLoader[Batch]:
    """A DataLoader of `Batch` over `samples`, pairs kept together.

    With ``shard=(rank, world_size)`` it yields only that rank's users (`UserShardBatchSampler`).
    """
    sampler: PairBatchSampler | UserShardBatchSampler
    if shard is None:
        sampler = PairBatchSampler(len(samples), batch_size, shuffle, seed)
    else:
        pair_users = histories.users[samples.sequence[0::2]].astype(np.int64)
        sampler = UserShardBatchSampler(pair_users, batch_size, shard[0], shard[1], shuffle, seed)
    return DataLoader(
        range(len(samples)),  # type: ignore[arg-type]
        batch_sampler=sampler,
        collate_fn=Collator(histories, samples, max_len, negatives, dense),
        num_workers=num_workers,
    )
