"""TorchRec embedding tables shared by every model."""

from cmrec.embeddings.tables import ItemEmbeddings

__all__ = ["ItemEmbeddings"]
