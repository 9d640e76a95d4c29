"""The report-kind contract: the field table agrees with the schema that stores it."""

from sqlalchemy import BigInteger, DateTime, Float, Text

from storage.database.schema import reports
from storage.reports import DEFAULT_QUEUES, FIELDS, KINDS, MAX_TEXT_CHARS, kind_of

COLUMN_TYPES = {"text": Text, "time": DateTime, "count": BigInteger, "number": Float}
# PostgreSQL's largest btree index row on 8 KB pages; UTF-8 takes up to 4 bytes a character.
BTREE_ROW_BYTES = 2704


def test_every_typed_copy_names_a_column_of_its_type() -> None:
    for fields in FIELDS.values():
        for field in fields:
            if field.column is not None:
                column = reports.c[field.column]
                assert isinstance(column.type, COLUMN_TYPES[field.type]), field


def test_every_indexed_text_column_copied_from_a_field_is_bounded_to_fit_its_index() -> None:
    indexed = {column.name for index in reports.indexes for column in index.columns}
    copied = [f for fields in FIELDS.values() for f in fields if f.column in indexed]
    assert {f.column for f in copied} >= {"call_id", "component", "tenant"}
    for field in copied:
        if field.type == "text":
            assert field.max_chars is not None, field
            # The widest index: the text beside an 8-byte timestamp, plus tuple headers.
            assert field.max_chars * 4 + 8 + 32 <= BTREE_ROW_BYTES
    assert MAX_TEXT_CHARS >= 255


def test_a_queue_kind_is_its_last_part() -> None:
    assert [kind_of(q) for q in DEFAULT_QUEUES] == list(KINDS)
    assert kind_of("site1.gvp.reporting.cdr") == "cdr"
    assert kind_of("cdr") == "cdr"
