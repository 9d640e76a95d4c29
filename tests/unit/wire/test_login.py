import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.wire.login import MAX_HEADER_BYTES, connect_value, login_problem, login_refusal

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def activemq_reads(value: str) -> str:
    """What ActiveMQ 5.17's STOMP codec makes of a CONNECT header value: before a version is
    agreed it undoes \\\\, \\c and \\n and keeps any other backslash as it is, then trims."""
    undone = {"\\": "\\", "c": ":", "n": "\n"}
    text = _ESCAPE.sub(lambda m: undone.get(m[1], m[0]), value)
    return text.strip("".join(chr(code) for code in range(0x21)))


awkward = st.text(alphabet=st.sampled_from("ab:\\cnrt %é\r\n\t "), max_size=20)


@given(awkward | st.text(max_size=20))
@settings(max_examples=500)
def test_what_login_problem_passes_reaches_activemq_unchanged(text: str) -> None:
    if login_problem("passcode", text) is None:
        assert activemq_reads(connect_value(text)) == text


@given(awkward, awkward)
@settings(max_examples=500)
def test_two_passwords_never_reach_activemq_as_one(a: str, b: str) -> None:
    if a != b and login_problem("passcode", a) is None and login_problem("passcode", b) is None:
        assert activemq_reads(connect_value(a)) != activemq_reads(connect_value(b))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("pw\r", "line break"),
        ("p\rw", "line break"),
        ("p\nw", "line break"),
        ("p\0w", "NUL"),
        (" pw", "trims"),
        ("pw\t", "trims"),
        ("\x01pw", "trims"),
        ("\\" * (MAX_HEADER_BYTES // 2), "longer than"),
    ],
)
def test_what_cannot_reach_activemq_unchanged_is_named(text: str, reason: str) -> None:
    problem = login_problem("passcode", text)
    assert problem is not None and reason in problem
    assert text.strip() == "" or text.strip() not in problem


@pytest.mark.parametrize(
    "text", ["", "p w", "a\\cb", "a:b", "é\\", "\\", "\xa0pw", "x" * (MAX_HEADER_BYTES - 10)]
)
def test_awkward_but_sendable_passwords_pass(text: str) -> None:
    assert login_problem("passcode", text) is None


def test_a_login_is_refused_by_its_first_value_that_cannot_be_sent() -> None:
    assert login_refusal("rs", "a\\c:b") is None
    assert login_refusal(None, None) is None
    assert login_refusal("rs", " pw") == ("password", login_problem("passcode", " pw"))
    assert login_refusal("r\ns", " pw") == ("user", login_problem("login", "r\ns"))
