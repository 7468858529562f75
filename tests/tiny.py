"""The one tiny configuration the tests share: a CM config small enough for 2 cores, and the
command-line data options of a tiny xlong-synthetic run."""

from __future__ import annotations

from typing import Any

import yaml

TINY: dict[str, Any] = {
    "item_dim": 8,
    "memory_dim": 8,
    "model_dim": 8,
    "slots": 3,
    "segment_len": 4,
    "subspaces": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "heads": 2,
    "ffn_dim": 16,
    "sampled_items": 10,
    "dropout": 0.0,
}
TINY_YAML = yaml.safe_dump(TINY)  # the same values as a `cmrec train --config` file


def tiny_data_args(users: int = 60, batch_size: int = 32) -> list[str]:
    """`cmrec train` options of a tiny built-in data set (histories of 24 clicks)."""
    return [
        *("--dataset", "xlong-synthetic", "--synthetic-users", str(users), "--synthetic-length", "24"),
        *("--max-len", "24", "--train-targets-per-user", "2", "--batch-size", str(batch_size)),
    ]
