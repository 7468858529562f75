from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchrec import EmbeddingCollection, EmbeddingConfig

from cmrec.data.batch import (
    Collator,
    HistoryNegatives,
    PairBatchSampler,
    UserShardBatchSampler,
    assign_users,
    make_loader,
)
from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.samples import Histories, Samples
from cmrec.errors import ConfigError


def _store() -> tuple[Histories, Samples]:
    histories = Histories(
        items=np.array([2, 3, 4, 5, 6, 7, 8, 9], dtype=np.int32),
        categories=np.array([20, 30, 40, 50, 60, 70, 80, 90], dtype=np.int32),
        offsets=np.array([0, 5, 8]),
        users=np.array([11, 12]),
    )
    samples = Samples(
        sequence=np.array([0, 0, 1, 1, 0, 0]),
        prefix_len=np.array([4, 4, 2, 2, 1, 1]),
        target_item=np.array([6, 9, 9, 2, 3, 5]),
        target_category=np.array([60, 90, 90, 20, 30, 50]),
        label=np.array([1, 0, 1, 0, 1, 0], dtype=np.float32),
    )
    return histories, samples


def test_collate_matches_hand_built_batch() -> None:
    histories, samples = _store()
    batch = Collator(histories, samples, max_len=3)([0, 1, 2, 3, 4, 5])
    assert batch.history.keys() == ["item", "category"]
    # Sequence 0 prefix 4 -> last 3 of [2, 3, 4, 5]; sequence 1 prefix 2 -> [7, 8];
    # sequence 0 prefix 1 -> [2].
    assert [t.tolist() for t in batch.history["item"].to_dense()] == [[3, 4, 5], [7, 8], [2]]
    assert batch.history["category"].to_dense()[0].tolist() == [30, 40, 50]
    assert batch.history["item"].lengths().tolist() == [3, 2, 1]
    assert batch.history_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.num_histories == 3 and batch.num_samples == 6
    assert batch.target_items.tolist() == [6, 9, 9, 2, 3, 5]
    assert batch.target_categories is not None and batch.target_categories.tolist() == [
        60,
        90,
        90,
        20,
        30,
        50,
    ]
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert batch.user_ids.tolist() == [11, 11, 12, 12, 11, 11]


def test_histories_are_deduplicated_in_first_appearance_order() -> None:
    histories, samples = _store()
    batch = Collator(histories, samples, max_len=10)([2, 0, 3, 1])
    assert batch.history_index.tolist() == [0, 1, 0, 1]
    assert batch.history["item"].to_dense()[0].tolist() == [7, 8]


def test_empty_history_gives_a_zero_length_row() -> None:
    histories, _ = _store()
    empty = Samples(np.array([1, 1]), np.array([0, 0]), np.array([2, 3]), None, np.array([1, 0], np.float32))
    batch = Collator(histories, empty, max_len=5)([0, 1])
    assert batch.history["item"].lengths().tolist() == [0]
    assert batch.history.keys() == ["item", "category"] and batch.target_categories is None


def test_pair_sampler_keeps_pairs_and_is_seeded() -> None:
    sampler = PairBatchSampler(num_samples=20, batch_size=4, shuffle=True, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == 5
    for rows in first:
        assert all(rows[i] % 2 == 0 and rows[i + 1] == rows[i] + 1 for i in range(0, len(rows), 2))
    assert sorted(r for rows in first for r in rows) == list(range(20))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    with pytest.raises(ConfigError, match="even number"):
        PairBatchSampler(10, 3)


def test_loader_batches_feed_an_embedding_collection() -> None:
    frame = pd.DataFrame(
        {
            "user_id": np.repeat([1, 2, 3], 8),
            "item_id": np.arange(24) % 7,
            "timestamp": np.tile(np.arange(8), 3),
        }
    )
    data = build_from_events(validate_events(frame), SplitConfig(max_len=4, train_targets_per_user=3))
    loader = make_loader(data.histories, data.train, batch_size=4, max_len=4)
    batches = list(loader)
    assert sum(b.num_samples for b in batches) == len(data.train) == 18
    collection = EmbeddingCollection(
        tables=[
            EmbeddingConfig(
                name="item", embedding_dim=8, num_embeddings=len(data.vocabs.items), feature_names=["item"]
            )
        ]
    )
    batch = batches[0].to("cpu")
    embedded = collection(batch.history)["item"]
    assert embedded.values().shape == (int(batch.history["item"].lengths().sum()), 8)
    assert batch.history.keys() == ["item"]  # no category column, no category key


def test_history_negatives_are_aligned_other_items_with_their_categories() -> None:
    histories, samples = _store()
    item_category = np.arange(12) * 10
    collate = Collator(histories, samples, max_len=3, negatives=HistoryNegatives(12, item_category, seed=1))
    batch = collate([0, 1, 2, 3])
    negatives = batch.history_negatives
    assert negatives is not None and negatives.keys() == ["item", "category"]
    assert negatives["item"].lengths().tolist() == batch.history["item"].lengths().tolist()
    drawn, real = negatives["item"].values(), batch.history["item"].values()
    assert (drawn != real).all() and (drawn >= 2).all() and (drawn < 12).all()
    assert negatives["category"].values().tolist() == (drawn * 10).tolist()
    again = Collator(histories, samples, max_len=3, negatives=HistoryNegatives(12, item_category, seed=1))
    assert again([0, 1, 2, 3]).history_negatives["item"].values().tolist() == drawn.tolist()  # type: ignore[index]
    assert Collator(histories, samples, max_len=3)([0, 1]).history_negatives is None


def test_user_shards_keep_each_user_on_one_rank_cover_every_pair_and_align_batch_counts() -> None:
    rng = np.random.default_rng(3)
    pair_users = np.repeat(np.arange(9), rng.integers(1, 12, size=9))  # 9 users, 1-11 pairs each
    seen: dict[int, set[int]] = {}
    batches = []
    for rank in range(3):
        sampler = UserShardBatchSampler(pair_users, 6, rank, 3, shuffle=True, seed=1)
        batches.append(list(sampler))
        rows = sampler.rows()
        assert rows.tolist() == [row for batch in batches[-1] for row in batch]
        assert all(
            len(b) % 2 == 0 and all(b[i] + 1 == b[i + 1] for i in range(0, len(b), 2)) for b in batches[-1]
        )
        seen[rank] = set(pair_users[rows[0::2] // 2].tolist())
        assert set((rows[0::2] // 2).tolist()) == set(sampler.pairs.tolist())  # repeats are its own pairs
    assert len({len(b) for b in batches}) == 1  # the same number of batches on every rank
    assert seen[0] | seen[1] | seen[2] == set(range(9))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # no user on two ranks
    counts = np.bincount(pair_users)
    loads = sorted(int(counts[list(users)].sum()) for users in seen.values())
    assert loads[-1] - loads[0] <= counts.max()  # greedy balance: within one user's pairs


def test_user_assignment_is_deterministic_and_needs_enough_users() -> None:
    pair_users = np.array([0, 0, 0, 1, 2, 2])
    assert assign_users(pair_users, 2).tolist() == [0, 1, 1]  # 3 pairs to rank 0, then 1 + 2 to rank 1
    one = UserShardBatchSampler(pair_users, 2, 0, 1)
    assert one.rows().tolist() == list(range(12))  # one process: every pair in order
    with pytest.raises(ConfigError, match="3 users cannot give each of 4 processes a share"):
        UserShardBatchSampler(pair_users, 2, 0, 4)
    with pytest.raises(ConfigError, match="rank 2 is not in a world of 2"):
        UserShardBatchSampler(pair_users, 2, 2, 2)
