"""The crash-safe disk journal; see storage.journal.journal for its durability policy."""

from storage.journal.journal import Entry, Journal, Pending
from storage.journal.position import Position
from storage.journal.segment import SegmentInfo

__all__ = ["Entry", "Journal", "Pending", "Position", "SegmentInfo"]
