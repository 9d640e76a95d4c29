import pytest

from storage.database.grants import grant_statements
from storage.errors import DatabaseError


def test_server_role_gets_insert_and_read_never_truncate_or_drop() -> None:
    sql = "\n".join(grant_statements("rs_server", "public"))
    assert 'GRANT SELECT, INSERT ON "public"."reports" TO "rs_server"' in sql
    assert 'GRANT SELECT, INSERT ON "public"."rejected_reports" TO "rs_server"' in sql
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."journal_positions"' in sql
    assert 'GRANT SELECT, INSERT, UPDATE ON "public"."fence"' in sql
    assert sql.index("REVOKE ALL") < sql.index("GRANT SELECT")
    for word in ("TRUNCATE", "DROP", "ALL PRIVILEGES", "CREATE"):
        assert word not in sql


@pytest.mark.parametrize("role", ['x"; DROP TABLE reports; --', "", "1abc", "a b"])
def test_role_names_are_plain_identifiers(role: str) -> None:
    with pytest.raises(DatabaseError):
        grant_statements(role, "public")
