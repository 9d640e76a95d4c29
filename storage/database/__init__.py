"""The database sink: reports, rejected reports, journal positions and fence in one transaction."""

from storage.database.sink import Sink, WriteResult

__all__ = ["Sink", "WriteResult"]
