"""The continual memory machine G (paper §3.2): segment encoder and memory update."""

from cmrec.data.jagged import segment_jagged
from cmrec.memory.encoder import SegmentEncoder
from cmrec.memory.gru import GroupedGRUCell
from cmrec.memory.machine import ContinualMemoryMachine
from cmrec.memory.update import MemoryUpdate

__all__ = ["ContinualMemoryMachine", "GroupedGRUCell", "MemoryUpdate", "SegmentEncoder", "segment_jagged"]
