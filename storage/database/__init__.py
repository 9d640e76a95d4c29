"""The database sink: reports, rejected reports, journal positions and fence in one transaction."""

from storage.database.sink import Batch, Sink, WriteResult

__all__ = ["Batch", "Sink", "WriteResult"]
