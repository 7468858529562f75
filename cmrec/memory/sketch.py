"""The count sketch's keys and buckets (`CMConfig.count_buckets`, `CMConfig.item_buckets`).

The memory's count rows hold two histograms, kept like the history mean (the mean over segments
of each segment's histogram, so each sums to 1):

* the **category sketch**: C entries, the share of the history whose category (the item id, on
  data without categories) is c modulo C; exact when C is at least the number of categories;
* the **item sketch**: `ITEM_HASHES` tables of C_i entries each, every click counted once in each
  table at a hash of its item id (a count-min sketch: the smallest of an item's entries is an
  upper bound of its share that is exact unless every one of its entries collides). It tells
  how often the user clicked the candidate itself, which no category count can: on a log where
  items come back it is the strongest evidence there is, and where an item is clicked at most
  once (a rating log), a candidate already in the history is one the user will not click.

A click's key packs both: ``item << KEY_BITS | (category mod C)`` (`pack_keys`), so one int64 per
click travels through the grids, the pending clicks and the scorer; `key_buckets` turns keys into
the entries they count in.
"""

from __future__ import annotations

import torch

KEY_BITS = 24  # a key's low bits hold its category bucket; C must stay below 2 ** KEY_BITS
ITEM_HASHES = 2
_PRIME = 2**31 - 1
# h_q(i) = ((i mod P) a_q + b_q) mod P mod C_i, fixed so that a stored memory means the same thing
# in every process. The multipliers are large: with a small one (48,271) the product never wraps
# modulo P for ids below 44,000, so both tables were functions of i mod C_i alone (one table's
# collisions, 15 % of MovieLens-1M positives looked clicked at C_i = 512 instead of 3 %).
# (i mod P) a_q < 2 ** 62: no int64 overflow.
_HASHES = ((1_103_515_245, 12_345), (1_812_433_253, 67_891))


def sketch_entries(count_buckets: int, item_buckets: int) -> int:
    """Entries of the count rows: C category buckets, then `ITEM_HASHES` tables of C_i."""
    return count_buckets + ITEM_HASHES * item_buckets


def pack_keys(items: torch.Tensor, categories: torch.Tensor | None, count_buckets: int) -> torch.Tensor:
    """(...) item ids and their categories (None: the item ids stand in) -> (...) int64 keys."""
    category = items if categories is None else categories
    low = category.long() % count_buckets if count_buckets else torch.zeros_like(items, dtype=torch.long)
    return items.long() * (1 << KEY_BITS) + low


def key_buckets(keys: torch.Tensor, count_buckets: int, item_buckets: int) -> torch.Tensor:
    """(...) packed keys -> (..., Q) the entries each counts in, in ``[0, sketch_entries)``: its
    category bucket (with C > 0), then one entry per item table (with C_i > 0)."""
    columns = []
    if count_buckets:
        columns.append((keys & ((1 << KEY_BITS) - 1)) % count_buckets)
    if item_buckets:
        item = (keys >> KEY_BITS) % _PRIME
        for table, (a, b) in enumerate(_HASHES[:ITEM_HASHES]):
            columns.append(count_buckets + table * item_buckets + (item * a + b) % _PRIME % item_buckets)
    return torch.stack(columns, dim=-1)
