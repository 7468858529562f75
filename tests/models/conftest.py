from __future__ import annotations

from typing import Any

import pytest
import torch

from cmrec.models.registry import DataSpec

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


@pytest.fixture
def spec() -> DataSpec:
    """30 items in 5 categories (item i has category 2 + i % 5)."""
    item_category = torch.tensor([0, 1] + [2 + i % 5 for i in range(28)])
    return DataSpec(num_items=30, num_categories=7, item_category=item_category)
