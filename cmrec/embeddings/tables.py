"""Item and category embeddings in one TorchRec `EmbeddingCollection`.

Shape letters: E events (values of a jagged batch), H histories, D the feature size d_x.

An event's feature is its item embedding plus, when the data has categories, its category
embedding (both D wide), so d_x does not depend on whether categories exist. The same tables embed
history events, candidate items and sampled items; every lookup goes through the collection (a
`KeyedJaggedTensor` in, jagged embeddings out), so the tables can be sharded by TorchRec unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.data.schema import CATEGORY_KEY, ITEM_KEY
from cmrec.errors import ConfigError


class ItemEmbeddings(nn.Module):
    """Item (and category) tables.

    Args:
        num_items: rows of the item table (the item vocabulary's size, padding and OOV included).
        dim: D, the width of both tables.
        num_categories: rows of the category table; 0 when the data has no categories.
        item_category: (num_items,) category index of each item, to give items looked up without a
            category (sampled items) their category. Required when ``num_categories > 0``.
        init_std: standard deviation of the normal initialisation of both tables.

    Example::

        embeddings = ItemEmbeddings(num_items=1000, dim=64)
        values, lengths = embeddings(batch.history)   # (E, 64), (H,)
        targets = embeddings.lookup(batch.target_items)  # (S, 64)
    """

    item_category: torch.Tensor

    def __init__(
        self,
        num_items: int,
        dim: int,
        num_categories: int = 0,
        item_category: torch.Tensor | None = None,
        init_std: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if num_items < 3 or dim < 1 or num_categories < 0:
            raise ConfigError(
                f"embeddings need num_items >= 3 and dim >= 1, got num_items={num_items}, dim={dim}"
            )
        if num_categories and (item_category is None or item_category.shape != (num_items,)):
            raise ConfigError("a category table needs item_category: one category index per item")
        std = init_std if init_std is not None else dim**-0.5
        init = partial(nn.init.normal_, mean=0.0, std=std)
        tables = [_table(ITEM_KEY, num_items, dim, init)]
        if num_categories:
            tables.append(_table(CATEGORY_KEY, num_categories, dim, init))
        self.collection = EmbeddingCollection(tables=tables, device=device)
        self.dim = dim
        self.num_items = num_items
        self.num_categories = num_categories
        self.keys = [ITEM_KEY, CATEGORY_KEY] if num_categories else [ITEM_KEY]
        self.register_buffer(
            "item_category",
            item_category.long().clone() if item_category is not None else torch.zeros(0, dtype=torch.long),
        )

    def forward(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed jagged histories.

        Returns:
            values: (E, D) event features; lengths: (H,) events per history.
        """
        if sorted(features.keys()) != sorted(self.keys):
            raise ConfigError(
                f"the batch has features {features.keys()}, the embeddings expect {self.keys}: "
                "a model trained with categories needs them in the data, and the other way round"
            )
        embedded = self.collection(features)
        items = embedded[ITEM_KEY]
        values = items.values()
        if self.num_categories:
            values = values + embedded[CATEGORY_KEY].values()
        return values, items.lengths()

    def lookup(self, items: torch.Tensor, categories: torch.Tensor | None = None) -> torch.Tensor:
        """Features of items of any shape: (*shape,) ids -> (*shape, D).

        Categories default to each item's category (`item_category`) when the tables have them.
        """
        flat = items.reshape(-1).long()
        if flat.numel() == 0:  # TorchRec cannot split an empty batch
            return torch.zeros(*items.shape, self.dim, device=items.device)
        values = [flat]
        if self.num_categories:
            cats = self.item_category[flat] if categories is None else categories.reshape(-1).long()
            values.append(cats)
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.cat(values),
            lengths=torch.ones(flat.numel() * len(self.keys), dtype=torch.long, device=flat.device),
        )
        embedded, _ = self(features)
        return embedded.reshape(*items.shape, self.dim)


def _table(name: str, rows: int, dim: int, init: Callable[[torch.Tensor], torch.Tensor]) -> EmbeddingConfig:
    return EmbeddingConfig(
        name=name, num_embeddings=rows, embedding_dim=dim, feature_names=[name], init_fn=init
    )
