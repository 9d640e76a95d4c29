"""Microsoft SQL Server: the portable statements, with the lock hints SQL Server needs.

Compiled in unit tests against SQLAlchemy's mssql dialect; not run against a live server. What
a deployment would check first: the driver's error numbers in engine.classify (it knows
SQLSTATEs and SQLAlchemy's classes), and READ COMMITTED SNAPSHOT off or the hints below kept.
"""

from typing import Any

from sqlalchemy import Executable, Select, Table, select

from storage.database.dialects.base import Dialect
from storage.database.schema import fence


class SQLServer(Dialect):
    def fence_lock(self, cluster: str) -> Executable:
        # SQL Server ignores FOR UPDATE; UPDLOCK holds the row to the end of the transaction and
        # HOLDLOCK the key range where the row is missing, so two first writers queue.
        return (
            select(fence.c.epoch)
            .with_hint(fence, "WITH (UPDLOCK, HOLDLOCK, ROWLOCK)", "mssql")
            .where(fence.c.cluster == cluster)
        )

    def probe_locked(self, probe: Select[Any], table: Table) -> Select[Any]:
        # The probe locks the key range it finds empty, so a concurrent insert of the same key
        # waits instead of failing on the unique index.
        return probe.with_hint(table, "WITH (UPDLOCK, HOLDLOCK)", "mssql")
