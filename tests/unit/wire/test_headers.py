from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.wire import headers

line = st.one_of(
    st.text(alphabet=st.sampled_from("ab:\\cnr-_ \t"), max_size=20),
    st.builds(lambda k, v: f"{k}:{v}", st.text(max_size=8), st.text(max_size=12)),
)


@given(st.lists(line, max_size=8), st.integers(min_value=0, max_value=3))
@settings(max_examples=300)
def test_same_headers_as_stomp_py(lines: list[str], offset: int) -> None:
    assert headers.parse_headers(lines, offset) == headers._original_headers(lines, offset)


def test_escapes_are_undone() -> None:
    parsed = headers.parse_headers(["report-id:a\\cb\\\\c", "x\\ny:1", "report-id:second"])
    assert parsed == {"report-id": "a:b\\c", "x\ny": "1"}


frame_part = st.sampled_from(
    ["MESSAGE", "\n", "\r\n", "\r", "destination:/queue/a", "a\\cb:c", ":", "x", "\x00", "é"]
)


def frame_view(frame):
    return None if frame is None else (frame.cmd, frame.headers, frame.original_headers, frame.body)


@given(st.lists(frame_part, max_size=14), st.binary(max_size=6))
@settings(max_examples=500)
def test_same_frames_as_stomp_py(parts: list[str], tail: bytes) -> None:
    raw = "".join(parts).encode() + tail
    assert frame_view(headers.parse_frame(raw)) == frame_view(headers._original_frame(raw))


# -- the transport's read ----------------------------------------------------------------------


class _Chunks:
    """A transport whose socket hands out `chunks`, then the end of the connection."""

    def __init__(self, chunks: list[bytes]) -> None:
        import stomp.transport

        self.transport = stomp.transport.BaseTransport()
        self.transport.running = True
        self.transport.blocking = True
        self.chunks = list(chunks)
        self.transport.receive = lambda: self.chunks.pop(0) if self.chunks else b""

    def reads(self, read) -> list:
        """What each read gives until the connection ends, with the buffer it leaves."""
        out: list = []
        for _ in range(len(self.chunks) + 2):
            try:
                frames = read(self.transport)
            except Exception as exc:  # the end of the connection, as stomp.py raises it
                out.append(type(exc).__name__)
                break
            out.append((frames, self.transport._BaseTransport__recvbuf))
        return out


header = st.sampled_from(
    [
        "destination:/queue/a",
        "content-length:0",
        "content-length:3",
        "content-length:12",
        "content-length: 5",
        "content-length:\n4",
        "message-id:ID\\c1",
        "x:content-length:2",
    ]
)
body = st.binary(max_size=12) | st.sampled_from([b"a\x00b", b"\x00\x00", b"{}", b"\n"])
frames = st.builds(
    lambda cmd, lines, end, body, eols: (
        cmd + b"".join(b"\n" + line.encode() for line in lines) + end + body + b"\x00" + eols
    ),
    st.sampled_from([b"MESSAGE", b"RECEIPT", b"\n", b""]),
    st.lists(header, max_size=3),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b""]),
    body,
    st.sampled_from([b"", b"\n", b"\r\n", b"\n\n", b"\r"]),
)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Frames (and heartbeats) cut into chunks anywhere."""
    data = b"".join(draw(st.lists(frames | st.just(b"\n"), max_size=8)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@given(streams())
@settings(max_examples=1500, deadline=None)
def test_same_frames_as_stomp_py_for_any_reads(chunks: list[bytes]) -> None:
    ours = _Chunks(chunks).reads(headers.read)
    theirs = _Chunks(chunks).reads(headers._original_read)
    assert ours == theirs


def test_many_frames_in_one_read_each_come_out_whole() -> None:
    frame = b"MESSAGE\ncontent-length:5\ndestination:/queue/a\n\na\x00b\x00c\x00\n"
    chunks = [frame * 40 + frame[:30], frame[30:] + frame]
    reads = _Chunks(chunks).reads(headers.read)
    assert [len(frames) for frames, _ in reads[:2]] == [40, 2]
    assert all(f == frame[:-2] for frames, _ in reads[:2] for f in frames)
