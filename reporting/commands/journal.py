"""`reporting-server journal inspect DIR [--json]`: what a journal directory holds.

Opens the journal read-only, so it is safe to run beside a live server: nothing is truncated,
moved or deleted. Pending counts every record on disk, since the drained positions live in the
database. Damaged bytes show twice: as the holes reading skips in their segment, and as the
copies in quarantine/ (the server makes those; inspecting only reports what it finds).
"""

import argparse
import json
from pathlib import Path

from storage.journal import Journal


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("journal", help="look into a journal directory")
    nested = parser.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    inspect = nested.add_parser("inspect", help="segments, records, pending, quarantined")
    inspect.add_argument("dir", type=Path, help="the journal directory")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=inspect_journal)


def inspect_journal(args: argparse.Namespace) -> int:
    journal = Journal.open_readonly(args.dir)
    try:
        segments = journal.segments()
        pending = journal.pending
        quarantined = journal.quarantined
    finally:
        journal.close()
    if args.json:
        doc = {
            "dir": str(args.dir),
            "segments": [info._asdict() for info in segments],
            "pending": pending._asdict(),
            "quarantined": [str(path) for path in quarantined],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"journal {args.dir}")
    if segments:
        print(f"{'segment':<40} {'writer':<12} {'epoch':>7} {'records':>10} {'bytes':>12}  note")
    for info in segments:
        notes = [f"damaged bytes {start}-{end} skipped" for start, end in info.holes]
        if info.damaged and not info.holes:
            notes.append(f"damaged: reading stops at byte {info.end}")
        elif info.damaged:
            notes.append("not yet copied to quarantine")
        tail = (
            info.size
            - info.end
            - sum(end - start for start, end in info.holes if start >= info.end)
        )
        if tail > 0:
            notes.append(f"{tail} bytes after the last record (torn or being written)")
        note = "; ".join(notes)
        print(
            f"{info.name:<40} {info.writer:<12} {info.epoch:>7} {info.records:>10} "
            f"{info.size:>12}  {note}".rstrip()
        )
    print(f"segments: {len(segments)}")
    print(f"pending: {pending.records} records, {pending.bytes} bytes")
    print(f"quarantined: {len(quarantined)}")
    for path in quarantined:
        # <segment>.bytes-<start>-<end>: the damaged bytes of a segment whose other records
        # were read; a bare segment name: a whole file in which nothing could be read.
        print(f"  {path} ({path.stat().st_size} bytes)")
    return 0
