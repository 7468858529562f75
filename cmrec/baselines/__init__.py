"""End-to-end baselines (DIEN, GRU4REC) and the mean-pooling floor, under the same Model contract."""

from cmrec.baselines.augru import AUGRU
from cmrec.baselines.avg_pool import AvgPoolConfig, AvgPoolModel
from cmrec.baselines.dien import DIENConfig, DIENModel
from cmrec.baselines.gru4rec import GRU4RecConfig, GRU4RecModel

__all__ = [
    "AUGRU",
    "AvgPoolConfig",
    "AvgPoolModel",
    "DIENConfig",
    "DIENModel",
    "GRU4RecConfig",
    "GRU4RecModel",
]
