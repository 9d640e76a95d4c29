"""Oracle: the portable statements as they are (SELECT ... FOR UPDATE; INSERT ... SELECT ...
FROM DUAL WHERE NOT EXISTS).

Compiled in unit tests against SQLAlchemy's oracle dialect; not run against a live server. At
Oracle's READ COMMITTED a concurrent insert of the same new key still fails on the unique index
(ORA-00001) rather than waiting: engine.classify would take it for the row's fault, so a
deployment with two drainers writing the same reports maps ORA-00001 to a retry first.
"""

from storage.database.dialects.base import Dialect


class Oracle(Dialect):
    pass
