"""For any sequence of appends, reopenings, releases and torn tails, reading back yields exactly
the acknowledged records, in order, each once. More examples: REPORTING_PROPERTY_EXAMPLES=1000."""

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from storage.errors import JournalFull
from storage.journal import Journal, Pending
from storage.journal.record import FRAME_SIZE, HEADER, encode_batch

EXAMPLES = int(os.environ.get("REPORTING_PROPERTY_EXAMPLES", "60"))

records = st.lists(st.binary(max_size=120), min_size=1, max_size=12)


@st.composite
def torn_tails(draw: st.DrawFn) -> bytes:
    """What a crash can leave after the last complete record: never a whole record."""
    kind = draw(st.sampled_from(["prefix", "random", "zeros"]))
    if kind == "prefix":
        whole = encode_batch([draw(st.binary(max_size=60))])
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if kind == "zeros":
        return bytes(draw(st.integers(1, 300)))
    return draw(st.binary(min_size=1, max_size=40))


class JournalMachine(RuleBasedStateMachine):
    @initialize(
        segment_bytes=st.integers(64, 1024),
        max_bytes=st.integers(500, 5000),
    )
    def open_first(self, segment_bytes: int, max_bytes: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="journal-prop-"))
        self.dir = self.root / "journal"
        self.options = {"segment_bytes": segment_bytes, "max_bytes": max_bytes}
        self.journal = Journal(self.dir, writer="rs-a", **self.options)
        self.acked: list[bytes] = []
        self.drained = 0  # how many of `acked` are in the "database"
        self.positions: dict[str, int] = {}  # what the database stores
        self.released: set[str] = set()
        self.used: set[str] = set()

    def teardown(self) -> None:
        if hasattr(self, "journal"):
            self.journal.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _reopen(self) -> None:
        self.journal.close()
        self.journal = Journal(self.dir, writer="rs-a", **self.options)
        self.released.update(self.journal.release(self.positions))

    @rule(batch=records)
    def append(self, batch: list[bytes]) -> None:
        size = len(encode_batch(batch))
        pending = self.journal.pending
        try:
            position = self.journal.append_batch(batch)
        except JournalFull:
            assert pending.bytes + size > self.options["max_bytes"]
            return
        assert pending.bytes + size <= self.options["max_bytes"]
        assert position.segment not in self.released, "a segment name was used twice"
        self.used.add(position.segment)
        self.acked.extend(batch)

    @rule(count=st.integers(1, 30))
    def drain(self, count: int) -> None:
        entries = list(self.journal.read(self.positions, max_records=count))
        assert [e.data for e in entries] == self.acked[self.drained : self.drained + count]
        for entry in entries:
            self.positions[entry.position.segment] = entry.position.byte
        self.drained += len(entries)
        deleted = self.journal.release(self.positions)
        assert not set(deleted) & self.released
        self.released.update(deleted)

    @rule()
    def reopen(self) -> None:
        self._reopen()

    @precondition(lambda self: any(self.dir.glob("*.seg")))
    @rule(tail=torn_tails())
    def crash_with_torn_tail(self, tail: bytes) -> None:
        self.journal.close()
        newest = max(self.dir.glob("*.seg"))
        with newest.open("ab") as f:
            f.write(tail)
        self._reopen()

    @rule(header=st.integers(0, len(HEADER) - 1))
    def crash_while_creating_a_segment(self, header: int) -> None:
        self.journal.close()
        names = sorted(p.name for p in self.dir.glob("*.seg"))
        sequence = int(names[-1][:8]) + 1 if names else 1
        (self.dir / f"{sequence:08d}-e0000000-rs-a.seg").write_bytes(HEADER[:header])
        self._reopen()

    @invariant()
    def reads_back_exactly_the_acknowledged_records(self) -> None:
        undrained = self.acked[self.drained :]
        assert [e.data for e in self.journal.read(self.positions)] == undrained
        everything = [e.data for e in self.journal.read()]
        kept = len(everything)
        assert kept >= len(undrained)
        assert everything == self.acked[len(self.acked) - kept :]
        assert self.journal.pending == Pending(
            len(undrained), sum(FRAME_SIZE + len(r) for r in undrained)
        )
        assert self.journal.quarantined == []


JournalMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_journal_machine = JournalMachine.TestCase
