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
    assert headers.parse_headers(lines, offset) == headers._original(lines, offset)


def test_escapes_are_undone() -> None:
    parsed = headers.parse_headers(["report-id:a\\cb\\\\c", "x\\ny:1", "report-id:second"])
    assert parsed == {"report-id": "a:b\\c", "x\ny": "1"}
