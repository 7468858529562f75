"""The history recall model H (paper §3.3): self-supervised losses against forgetting."""

from cmrec.recall.fragments import Fragments, sample_fragments
from cmrec.recall.model import HistoryRecall

__all__ = ["Fragments", "HistoryRecall", "sample_fragments"]
