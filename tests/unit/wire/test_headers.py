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
