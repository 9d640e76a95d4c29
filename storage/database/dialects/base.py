"""`Dialect`: the interface, and the portable statements behind it."""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    Select,
    Table,
    and_,
    bindparam,
    literal,
    select,
    update,
)

from storage.database.rows import report_row
from storage.database.schema import fence, journal_positions, reports
from storage.reports import Report


class Dialect:
    """How one database takes the fence, new rows and positions of a batch's transaction."""

    # True where reports go in by COPY (PostgreSQL): `bulk_rows` gives their text and typed
    # columns, and the parsed payload is not needed.
    copies = False

    # -- the fence ----------------------------------------------------------------------------

    def claim_fence(
        self, conn: Connection, cluster: str, epoch: int, *, strict: bool = False
    ) -> bool:
        """Raise `cluster`'s fence to `epoch` in `conn`'s transaction and keep its row locked to
        the end of it; False (nothing changed) if a newer epoch holds it, or with `strict` the
        same epoch (a first claim: an epoch another writer holds already is not this one's).

        The locking read always sees the newest committed epoch whatever the isolation level,
        and a writer of an older epoch waits on the lock, then sees the newer epoch.
        """
        current = conn.scalar(self.fence_lock(cluster))
        if current is None:
            made = conn.execute(self.fence_insert(), {"cluster": cluster, "epoch": epoch})
            if made.rowcount == 1:
                return True  # the first writer of the domain: its row, at its epoch
            current = conn.scalar(self.fence_lock(cluster))
        if current > epoch or (strict and current == epoch):
            return False
        if current < epoch:
            conn.execute(self.fence_raise(cluster, epoch))
        return True

    def fence_lock(self, cluster: str) -> Executable:
        """Reads the fence's epoch, locking its row to the end of the transaction."""
        return select(fence.c.epoch).where(fence.c.cluster == cluster).with_for_update()

    def fence_insert(self) -> Executable:
        """Adds the fence row (:cluster, :epoch) of a domain that has none; a no-op if it
        exists by now."""
        return self.insert_missing(fence, ["cluster"])

    def fence_raise(self, cluster: str, epoch: int) -> Executable:
        # Guarded again, though the row is locked: the statement alone never lowers the fence.
        return (
            update(fence)
            .where(fence.c.cluster == cluster, fence.c.epoch <= epoch)
            .values(epoch=epoch)
        )

    # -- rows ---------------------------------------------------------------------------------

    def insert_many(
        self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: str
    ) -> int:
        """Insert `rows`, skipping those whose `key` is stored already or earlier in `rows`;
        returns how many were stored."""
        if not rows:
            return 0
        statement = self.insert_missing(table, [key], columns=list(rows[0]))
        return conn.execute(statement, list(rows)).rowcount

    def insert_missing(
        self, table: Table, keys: Sequence[str], columns: Sequence[str] | None = None
    ) -> Executable:
        """INSERT INTO table (columns) SELECT :columns WHERE NOT EXISTS (a row with those
        keys), with one bind parameter per column, named after it."""
        names = list(columns) if columns is not None else [c.name for c in table.columns]
        values = [bindparam(name, type_=table.c[name].type) for name in names]
        probe = (
            select(literal(1))
            .select_from(table)
            .where(*(table.c[key] == bindparam(key, type_=table.c[key].type) for key in keys))
        )
        probe = self.probe_locked(probe, table)
        return table.insert().from_select(names, select(*values).where(~probe.exists()))

    def probe_locked(self, probe: Select[Any], table: Table) -> Select[Any]:
        """The NOT EXISTS probe of `insert_missing`, with whatever lock the database needs for
        a concurrent insert of the same key to wait rather than fail; as it is here."""
        return probe

    # -- a batch's first statements -----------------------------------------------------------

    def open_batch(
        self,
        conn: Connection,
        *,
        cluster: str,
        epoch: int,
        journal: str,
        positions: Mapping[str, int],
        check: Sequence[str],
    ) -> dict[str, int] | None:
        """Claim the fence (`claim_fence`), then store `journal`'s `positions` and return the
        positions stored before for the segments in `check`; None, with nothing stored, if a
        newer epoch holds the fence. The rows of the batch follow in the same transaction."""
        if not self.claim_fence(conn, cluster, epoch):
            return None
        stored: dict[str, int] = {}
        if check:
            query = select(journal_positions.c.segment, journal_positions.c.byte).where(
                journal_positions.c.journal == journal,
                journal_positions.c.segment.in_(bindparam("names", expanding=True)),
            )
            stored = dict(conn.execute(query, {"names": sorted(check)}).all())
        self.store_positions(conn, journal, positions)
        return stored

    # -- positions ----------------------------------------------------------------------------

    def store_positions(self, conn: Connection, journal: str, positions: Mapping[str, int]) -> None:
        """Set `journal`'s stored position of each segment (segment -> byte reached)."""
        if not positions:
            return
        rows = [
            {"journal": journal, "segment": segment, "byte": byte}
            for segment, byte in sorted(positions.items())
        ]
        self.upsert_positions(conn, rows)

    def upsert_positions(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # Under the fence lock no other writer of this journal is in a transaction, so an UPDATE
        # then an INSERT of the rows it did not find cannot race with one.
        move = (
            update(journal_positions)
            .where(
                and_(
                    journal_positions.c.journal == bindparam("j"),
                    journal_positions.c.segment == bindparam("s"),
                )
            )
            .values(byte=bindparam("b"))
        )
        conn.execute(move, [{"j": r["journal"], "s": r["segment"], "b": r["byte"]} for r in rows])
        add = self.insert_missing(journal_positions, ["journal", "segment"])
        conn.execute(add, rows)

    # -- the bulk path for reports ------------------------------------------------------------

    def bulk_rows(self, items: Sequence[Report]) -> Any | None:
        """The reports as the bulk path takes them, built outside the transaction; None where
        the dialect inserts `report_row`s. Sliced as a list is (the sink splits a batch to find
        a refused row) and joined by `join_bulk` (the drainer joins a batch and the records
        appended after it)."""
        return None

    def join_bulk(self, parts: Sequence[Any]) -> Any:
        """`bulk_rows` of several parts as one, in their order."""
        return [row for part in parts for row in part]

    def insert_reports(self, conn: Connection, items: Sequence[Report], bulk: Any | None) -> int:
        """Insert reports (with their `bulk_rows`), skipping stored report_ids; returns how many
        were stored."""
        return self.insert_many(conn, reports, [report_row(r) for r in items], "report_id")

    def insert_isolating(self, conn: Connection, items: Sequence[Report], bulk: Any | None) -> int:
        """`insert_reports` while the sink looks for a row the database refuses: by no way that
        fails on a stored report_id (rather than skipping it), which would pass for one."""
        return self.insert_reports(conn, items, bulk)
