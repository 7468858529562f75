"""Task heads that read a memory."""

from cmrec.heads.reason import ReasonHead

__all__ = ["ReasonHead"]
