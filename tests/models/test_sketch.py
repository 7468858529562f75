"""The count sketch's keys and hashes (`cmrec.memory.sketch`)."""

from __future__ import annotations

import torch

from cmrec.memory.sketch import ITEM_HASHES, KEY_BITS, key_buckets, pack_keys, sketch_entries


def test_a_key_packs_the_item_and_its_category_bucket() -> None:
    items = torch.tensor([3, 70_000, 2**35])
    keys = pack_keys(items, torch.tensor([5, 300, 7]), count_buckets=256)
    assert (keys >> KEY_BITS).tolist() == items.tolist()
    assert key_buckets(keys, 256, 0)[:, 0].tolist() == [5, 300 % 256, 7]
    # No categories: the item id stands in for its category.
    assert key_buckets(pack_keys(items, None, 256), 256, 0)[:, 0].tolist() == [3, 70_000 % 256, 0]
    # Only the item sketch: no category column, the item tables after C = 0 entries.
    buckets = key_buckets(pack_keys(items, None, 0), 0, 64)
    assert buckets.shape == (3, ITEM_HASHES) and sketch_entries(0, 64) == ITEM_HASHES * 64
    assert bool((buckets[:, 0] < 64).all()) and bool(((buckets[:, 1] >= 64) & (buckets[:, 1] < 128)).all())


def test_the_item_tables_hash_independently() -> None:
    """Count-min needs tables whose collisions are independent: of the ids sharing an entry in the
    first table, about 1 / C_i share one in the second too (a hash of ``i mod C_i`` in both would
    make that every one of them, and the min of two tables no better than one)."""
    buckets = 256
    entries = key_buckets(pack_keys(torch.arange(20_000), None, 0), 0, buckets)  # (20,000, 2)
    first, second = entries[:, 0], entries[:, 1] - buckets
    same_first = first[:, None] == first[None, :2000]  # (20,000, 2,000): pairs with one id of the first 2,000
    both = same_first & (second[:, None] == second[None, :2000])
    pairs = int(same_first.sum()) - 2000  # without each id with itself
    shared = (int(both.sum()) - 2000) / pairs
    assert shared < 3 / buckets
    # Each table spreads the ids evenly: no entry holds more than twice its share.
    for table in (first, second):
        assert int(torch.bincount(table, minlength=buckets).max()) < 2 * 20_000 / buckets
