"""The ledger: a text file of report ids the broker confirmed with a RECEIPT, one per line.

A producer appends an id only after its receipt, so every id in the ledger is a report the
server must store exactly once; `verify` checks the database against it. The same id may appear
more than once (a resend whose first receipt was lost) and that is fine.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


class Ledger:
    """Appends confirmed ids to a file, flushed after every append so a crash loses none written."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file: TextIO = self.path.open("a", encoding="utf-8")

    def append(self, report_ids: Iterable[str]) -> None:
        lines = "".join(f"{report_id}\n" for report_id in report_ids)
        if lines:
            self._file.write(lines)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class LedgerContents:
    ids: frozenset[str]
    lines: int

    @property
    def repeated_lines(self) -> int:
        """Lines that repeat an id already listed: resends, harmless."""
        return self.lines - len(self.ids)


def read_ledger(path: Path | str) -> LedgerContents:
    """The distinct ids of a ledger file; a last line without its newline is torn, and skipped."""
    ids: set[str] = set()
    lines = 0
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            report_id = line[:-1]
            if line.endswith("\n") and report_id:
                ids.add(report_id)
                lines += 1
    return LedgerContents(frozenset(ids), lines)
