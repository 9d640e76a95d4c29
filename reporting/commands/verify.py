"""`reporting-server verify --config FILE --ledger FILE`: sent, stored, missing, duplicated.

`sent` is the distinct ids of the ledger (every one confirmed by a broker receipt), `stored` how
many of them have a row in `reports`, `missing` how many have none, `duplicated` how many have
more than one. Repeated ledger lines (a resend whose first receipt was lost) are counted apart;
they are normal. When `<ledger>.rejected` exists (from `produce --malformed`), each of its ids must
have a row in `rejected_reports` too. Exit code 0 only when nothing is missing or duplicated.
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, select

from reporting.config import load_config
from reporting.errors import ReportingError
from reporting.ledger import LedgerContents, read_ledger

SHOWN_IDS = 10
_ID_CHUNK = 1000
WAIT_POLL_S = 0.5


@dataclass
class Verdict:
    sent: int
    stored: int
    missing: int
    duplicated: int
    ledger_lines: int
    repeated_lines: int
    rejected_expected: int = 0
    rejected_found: int = 0
    missing_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)
    rejected_missing_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        rejected_ok = self.rejected_found == self.rejected_expected
        return self.missing == 0 and self.duplicated == 0 and rejected_ok

    def line(self) -> str:
        text = (
            f"sent {self.sent}, stored {self.stored}, missing {self.missing}, "
            f"duplicated {self.duplicated} (ledger lines {self.ledger_lines}, "
            f"{self.repeated_lines} repeated)"
        )
        if self.rejected_expected:
            text += f"; rejected {self.rejected_found} of {self.rejected_expected} expected"
        return text


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify", help="check a producer's ledger against the database: sent, stored, missing"
    )
    parser.add_argument("--config", required=True, help="an instance's TOML file (its database)")
    parser.add_argument("--ledger", required=True, type=Path, help="the ledger file of produce")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="re-check for up to this many seconds while reports are still missing",
    )
    parser.set_defaults(func=verify)


def _read(path: Path) -> LedgerContents:
    try:
        return read_ledger(path)
    except FileNotFoundError:
        raise ReportingError(f"ledger file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportingError(f"cannot read ledger file {path}: {exc}") from None


def _rejected_counts(url: str, report_ids: list[str]) -> dict[str, int]:
    from storage.database.engine import make_engine, translated
    from storage.database.schema import rejected_reports

    counts = dict.fromkeys(report_ids, 0)
    query = (
        select(rejected_reports.c.report_id, func.count())
        .where(rejected_reports.c.report_id.in_(bindparam("ids", expanding=True)))
        .group_by(rejected_reports.c.report_id)
    )
    with translated(url):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                for start in range(0, len(report_ids), _ID_CHUNK):
                    chunk = report_ids[start : start + _ID_CHUNK]
                    for report_id, count in conn.execute(query, {"ids": chunk}):
                        counts[report_id] = int(count)
        finally:
            engine.dispose()
    return counts


def check(url: str, ledger: Path) -> Verdict:
    """The ledger (and its `.rejected` companion, if any) against the database at `url`."""
    from storage.database import Sink

    contents = _read(ledger)
    rejected_path = Path(f"{ledger}.rejected")
    rejected_ids = sorted(_read(rejected_path).ids) if rejected_path.exists() else []
    # Sink wants its drainer identity; verify only reads, so any names do.
    sink = Sink(url, cluster="verify", journal="verify", warn_unreachable=False)
    try:
        counts = sink.report_id_counts(sorted(contents.ids))
    finally:
        sink.close()
    missing = sorted(i for i, n in counts.items() if n == 0)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    rejected = _rejected_counts(url, rejected_ids) if rejected_ids else {}
    rejected_missing = sorted(i for i, n in rejected.items() if n == 0)
    return Verdict(
        sent=len(contents.ids),
        stored=len(contents.ids) - len(missing),
        missing=len(missing),
        duplicated=len(duplicated),
        ledger_lines=contents.lines,
        repeated_lines=contents.repeated_lines,
        rejected_expected=len(rejected_ids),
        rejected_found=len(rejected_ids) - len(rejected_missing),
        missing_ids=missing[:SHOWN_IDS],
        duplicated_ids=duplicated[:SHOWN_IDS],
        rejected_missing_ids=rejected_missing[:SHOWN_IDS],
    )


def verify(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    deadline = time.monotonic() + max(0.0, args.wait)
    verdict = check(config.database.url, args.ledger)
    # Duplicates never go away, so only missing reports are worth waiting for.
    while verdict.duplicated == 0 and not verdict.ok and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_S)  # polling the database; nothing to be notified by
        verdict = check(config.database.url, args.ledger)
    if args.json:
        doc: dict[str, Any] = asdict(verdict)
        doc["ok"] = verdict.ok
        print(json.dumps(doc))
    else:
        print(verdict.line())
        for label, ids in (
            ("missing", verdict.missing_ids),
            ("duplicated", verdict.duplicated_ids),
            ("not in rejected_reports", verdict.rejected_missing_ids),
        ):
            if ids:
                print(f"  {label}: {', '.join(ids)}" + (" ..." if len(ids) == SHOWN_IDS else ""))
    return 0 if verdict.ok else 1
