"""SQLite, the embedded default: `INSERT ... ON CONFLICT` for rows, positions and the fence.

A write transaction begins with BEGIN IMMEDIATE (engine.py), so it holds the database's one
write lock from its first statement: there is no row lock to take.
"""

import functools
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from sqlalchemy import Connection, Executable, Table, bindparam
from sqlalchemy.dialects import sqlite

from storage.database.dialects.base import Dialect
from storage.database.schema import fence, journal_positions


class OnConflict(Dialect):
    """The statements of a database with `INSERT ... ON CONFLICT` and RETURNING."""

    module: ModuleType = sqlite

    def claim_fence(
        self, conn: Connection, cluster: str, epoch: int, *, strict: bool = False
    ) -> bool:
        # RETURNING rather than rowcount, which SQLAlchemy does not pass on for every INSERT.
        claim = self._claim_strict if strict else self._claim
        return conn.execute(claim, {"cluster": cluster, "epoch": epoch}).first() is not None

    @functools.cached_property
    def _claim(self) -> Executable:
        return self._claim_where(fence.c.epoch <= bindparam("epoch"))

    @functools.cached_property
    def _claim_strict(self) -> Executable:
        return self._claim_where(fence.c.epoch < bindparam("epoch"))

    def _claim_where(self, newer: Any) -> Executable:
        # An upsert rather than a bare UPDATE, so a first writer needs no separate claim. On
        # PostgreSQL it locks the fence row until commit: a writer of an older epoch waits, then
        # sees the newer epoch and matches nothing. Built once: a batch only binds its values.
        statement = self.module.insert(fence).values(
            cluster=bindparam("cluster"), epoch=bindparam("epoch")
        )
        statement = statement.on_conflict_do_update(
            index_elements=[fence.c.cluster],
            set_={"epoch": statement.excluded.epoch},
            where=newer,
        )
        return statement.returning(fence.c.epoch)

    def insert_many(
        self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: str
    ) -> int:
        if not rows:
            return 0
        statement = self.module.insert(table).on_conflict_do_nothing(index_elements=[key])
        # Counted by RETURNING: the driver's executemany rowcount does not reach SQLAlchemy's
        # result. SQLAlchemy sends it as multi-row VALUES pages ("insertmanyvalues").
        result = conn.execute(statement.returning(table.c[key]), list(rows))
        return len(result.all())

    def upsert_positions(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(self._positions_upsert, rows)

    @functools.cached_property
    def _positions_upsert(self) -> Executable:
        statement = self.module.insert(journal_positions)
        return statement.on_conflict_do_update(
            index_elements=[journal_positions.c.journal, journal_positions.c.segment],
            set_={"byte": statement.excluded.byte},
        )


class SQLite(OnConflict):
    pass
