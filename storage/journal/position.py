from typing import NamedTuple


class Position(NamedTuple):
    """Where a reader stands in the journal: the byte just after a record of a segment.

    Positions order as segment names do (zero-padded, so name order is log order), then by
    byte; they are stored in the database as the segment's name and the byte.
    """

    segment: str
    byte: int
