from pathlib import Path

import pytest

from reporting.cli import main
from storage.database.grants import grant_statements, schema_of
from storage.errors import DatabaseError


def test_server_role_gets_insert_and_read_never_truncate_or_drop() -> None:
    sql = "\n".join(grant_statements("rs_server", "public"))
    assert 'GRANT SELECT, INSERT ON "public"."reports" TO "rs_server"' in sql
    assert 'GRANT SELECT, INSERT ON "public"."rejected_reports" TO "rs_server"' in sql
    assert 'GRANT SELECT, INSERT, UPDATE ON "public"."journal_positions"' in sql
    assert "DELETE" not in sql
    assert 'GRANT SELECT, INSERT, UPDATE ON "public"."fence"' in sql
    assert sql.index("REVOKE ALL") < sql.index("GRANT SELECT")
    for word in ("TRUNCATE", "DROP", "ALL PRIVILEGES"):
        assert word not in sql
    # CREATE only where it is taken away, from every role.
    assert [line for line in sql.splitlines() if "CREATE" in line] == [
        'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC'
    ]


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("postgresql+psycopg://rs@h/db", "public"),
        ("postgresql+psycopg://rs@h/db?options=-csearch_path%3Dreporting", "reporting"),
        ("postgresql+psycopg://rs@h/db?options=-c%20search_path%3Dr2,public", "r2"),
        ("postgresql+psycopg://rs@h/db?sslmode=require&options=--search_path%3Dr3", "r3"),
    ],
)
def test_schema_comes_from_the_urls_search_path(url: str, schema: str) -> None:
    assert schema_of(url) == schema


def test_grant_print_needs_no_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "grant", "--role", "rs_server", "--print", "--schema", "rep"]) == 0
    out = capsys.readouterr().out
    assert 'GRANT SELECT, INSERT ON "rep"."reports" TO "rs_server";' in out
    assert main(["db", "grant", "--role", "rs_server", "--print"]) == 0
    assert 'ON SCHEMA "public" TO "rs_server"' in capsys.readouterr().out


def test_grant_print_takes_the_schema_from_the_configs_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The password is not looked up: printing needs none.
    (tmp_path / "owner.toml").write_text(
        "[database]\n"
        'url = "postgresql+psycopg://rs_owner@h/db?options=-csearch_path%3Dreporting"\n'
        'password_env = "RS_UNSET_OWNER_PW"\n'
    )
    argv = ["db", "grant", "--config", str(tmp_path / "owner.toml"), "--role", "rs", "--print"]
    assert main(argv) == 0
    assert 'GRANT USAGE ON SCHEMA "reporting" TO "rs";' in capsys.readouterr().out


def test_grant_without_print_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "grant", "--role", "rs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reporting-server: config error: --config:") and err.count("\n") == 1


@pytest.mark.parametrize("role", ['x"; DROP TABLE reports; --', "", "1abc", "a b"])
def test_role_names_are_plain_identifiers(role: str) -> None:
    with pytest.raises(DatabaseError):
        grant_statements(role, "public")
