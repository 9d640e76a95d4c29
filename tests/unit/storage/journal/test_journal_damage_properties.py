"""Whatever bytes are flipped and wherever segments are cut short, reopening the journal reads
back every intact record, in order, each once, and sets the damaged bytes aside in quarantine.
More examples: REPORTING_PROPERTY_EXAMPLES=1000."""

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.journal import Journal
from storage.journal.record import HEADER_SIZE

EXAMPLES = int(os.environ.get("REPORTING_PROPERTY_EXAMPLES", "100"))

batches = st.lists(
    st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=6), min_size=1, max_size=12
)
flips = st.lists(
    st.tuples(st.integers(0, 1 << 30), st.integers(0, 1 << 30), st.integers(1, 255)), max_size=4
)
cuts = st.lists(
    st.tuples(st.integers(0, 1 << 30), st.integers(0, 1 << 30), st.integers(0, 200)), max_size=2
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=batches,
    segment_bytes=st.integers(64, 600),
    flips=flips,
    cuts=cuts,
)
def test_every_intact_record_is_read_back_once_after_any_damage(
    batches: list[list[bytes]],
    segment_bytes: int,
    flips: list[tuple[int, int, int]],
    cuts: list[tuple[int, int, int]],
) -> None:
    root = Path(tempfile.mkdtemp(prefix="journal-damage-"))
    directory = root / "journal"
    try:
        # Where each record lies: (segment, start byte, end byte, data).
        spans: list[tuple[str, int, int, bytes]] = []
        with Journal(directory, writer="rs-a", segment_bytes=segment_bytes) as journal:
            for batch in batches:
                journal.append_batch(batch)
            previous: dict[str, int] = {}
            for entry in journal.read():
                segment, end = entry.position
                start = previous.get(segment, HEADER_SIZE)
                spans.append((segment, start, end, entry.data))
                previous[segment] = end
        names = sorted(p.name for p in directory.glob("*.seg"))
        original = {name: (directory / name).read_bytes() for name in names}
        for which, where, xor in flips:
            path = directory / names[which % len(names)]
            data = bytearray(path.read_bytes())
            data[where % len(data)] ^= xor
            path.write_bytes(bytes(data))
        for which, where, zeros in cuts:
            # A crash: the file cut short, and after a power loss maybe zeros after the cut.
            path = directory / names[which % len(names)]
            data = path.read_bytes()
            path.write_bytes(data[: where % (len(data) + 1)] + bytes(zeros))
        final = {name: (directory / name).read_bytes() for name in names}

        def intact(segment: str, start: int, end: int) -> bool:
            return final[segment][start:end] == original[segment][start:end]

        expected = [data for segment, start, end, data in spans if intact(segment, start, end)]
        with Journal(directory, writer="rs-a", segment_bytes=segment_bytes) as journal:
            got = [entry.data for entry in journal.read()]
            assert got == expected
            assert journal.pending.records == len(expected)
            quarantined = journal.quarantined
        # A second open finds the same, and sets nothing more aside.
        with Journal(directory, writer="rs-a", segment_bytes=segment_bytes) as journal:
            assert [entry.data for entry in journal.read()] == expected
            assert journal.quarantined == quarantined
    finally:
        shutil.rmtree(root, ignore_errors=True)
