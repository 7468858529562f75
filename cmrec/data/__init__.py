"""Data layer: event logs and XLong files to samples and TorchRec batches."""

from cmrec.data.batch import Batch, Collator, HistoryNegatives, PairBatchSampler, make_loader
from cmrec.data.dataset import ClickLogData, SplitConfig, Vocabularies, build_from_events
from cmrec.data.events import read_events, validate_events
from cmrec.data.samples import Histories, NegativeSampler, Samples
from cmrec.data.vocab import Vocab
from cmrec.data.xlong import build_from_xlong, parse_xlong, write_xlong

__all__ = [
    "Batch",
    "ClickLogData",
    "Collator",
    "Histories",
    "HistoryNegatives",
    "NegativeSampler",
    "PairBatchSampler",
    "Samples",
    "SplitConfig",
    "Vocab",
    "Vocabularies",
    "build_from_events",
    "build_from_xlong",
    "make_loader",
    "parse_xlong",
    "read_events",
    "validate_events",
    "write_xlong",
]
