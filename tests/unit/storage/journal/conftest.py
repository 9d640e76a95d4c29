from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.journal import Journal


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def open_journal(journal_dir: Path) -> Iterator[Callable[..., Journal]]:
    """Opens journals on `journal_dir` and closes them all after the test."""
    opened: list[Journal] = []

    def open_(**kwargs: object) -> Journal:
        kwargs.setdefault("writer", "rs-a")
        journal = Journal(journal_dir, **kwargs)  # type: ignore[arg-type]
        opened.append(journal)
        return journal

    yield open_
    for journal in opened:
        journal.close()
