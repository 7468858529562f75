from __future__ import annotations

import pytest
import torch

from cmrec.models.registry import DataSpec
from tests.tiny import TINY

__all__ = ["TINY", "spec"]


@pytest.fixture
def spec() -> DataSpec:
    """30 items in 5 categories (item i has category 2 + i % 5)."""
    item_category = torch.tensor([0, 1] + [2 + i % 5 for i in range(28)])
    return DataSpec(num_items=30, num_categories=7, item_category=item_category)
