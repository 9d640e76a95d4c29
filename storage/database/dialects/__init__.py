"""The statements of a batch's transaction that differ between databases, one module each.

A sink asks `for_name(engine.dialect.name)` for its `Dialect` and goes through it for the four
things that differ: locking and raising the fence, inserting rows while skipping those whose key
is stored already, the position upsert, and the bulk path for reports. Everything else (the
transaction, savepoints, bisection of refused rows, reads) is the sink's own, on SQLAlchemy Core.

`Dialect` itself is the portable way, in statements every SQL database takes: the fence row read
with a locking read and then raised, rows added by INSERT ... SELECT ... WHERE NOT EXISTS,
positions updated then added where missing. SQL Server and Oracle take it with small changes
(`mssql.py`, `oracle.py`), compiled in unit tests but not run against a live server.
"""

from storage.database.dialects.base import Dialect


def for_name(name: str) -> Dialect:
    """The dialect of a SQLAlchemy dialect name (`engine.dialect.name`)."""
    # Imported here: each module may import its driver, which only its users need.
    if name == "postgresql":
        from storage.database.dialects.postgresql import PostgreSQL

        return PostgreSQL()
    if name == "sqlite":
        from storage.database.dialects.sqlite import SQLite

        return SQLite()
    if name in ("mysql", "mariadb"):
        from storage.database.dialects.mariadb import MariaDB

        return MariaDB()
    if name == "mssql":
        from storage.database.dialects.mssql import SQLServer

        return SQLServer()
    if name == "oracle":
        from storage.database.dialects.oracle import Oracle

        return Oracle()
    raise ValueError(f"no dialect for database {name!r}")


__all__ = ["Dialect", "for_name"]
