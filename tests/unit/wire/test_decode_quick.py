"""The C parser's shortcut in decode: whatever it accepts is exactly what `json.loads` with
decode's hooks gives (same keys, same values, same types, the sign of -0.0), and whatever that
parser refuses or reads differently (names given twice, integers past 64 bits, NaN, lone
surrogates) the shortcut leaves to it."""

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.wire import decode as decoding

any_text = st.text(st.characters(codec="utf-8") | st.sampled_from('":{}[], \t\n\\'))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats()
    | any_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)


def standard(text: str) -> Any:
    return json.loads(
        text,
        parse_constant=decoding._reject_constant,
        parse_float=decoding._finite_float,
        object_pairs_hook=decoding._unique_keys,
    )


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def check(text: str) -> None:
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        return  # not bytes a broker could hand over
    quick = decoding._quick_parse(body, text)
    if quick is None:
        return
    try:
        expected = standard(text)
    except (ValueError, RecursionError):
        pytest.fail(f"the shortcut accepted what json.loads refuses: {text!r}")
    assert same(quick, expected), text


@settings(max_examples=400, deadline=None)
@given(values, st.sampled_from([None, (",", ":"), (", ", ": "), (" , ", " : ")]))
def test_shortcut_agrees_with_json_loads_on_json(value: Any, separators: Any) -> None:
    text = json.dumps({"v": value, "w": [value]}, separators=separators, allow_nan=True)
    check(text)


@settings(max_examples=400, deadline=None)
@given(values, st.data())
def test_shortcut_agrees_with_json_loads_on_mangled_json(value: Any, data: st.DataObject) -> None:
    # Splices that make names repeat, numbers grow, escapes break.
    text = json.dumps({"a": value, "b": 1}, allow_nan=True)
    cut = data.draw(st.integers(0, len(text)))
    insert = data.draw(
        st.sampled_from(['"a":2,', '"b": 3,', '"a" :4,', "1" * 19, "e400", "\\ud800", "NaN", "-"])
        | any_text
    )
    check(text[:cut] + insert + text[cut:])


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        '{"a":1, "b":{"c":1,"c":2}}',
        '{"a" :1,"a":2}',
        '{"a"\n:1,"a":2}',
        '{"x":"\\":","a":1,"a":2}',
        '{"a":123456789012345678901234567890}',
        '{"a":-9223372036854775809}',
        '{"a":18446744073709551616}',
        '{"a":NaN}',
        '{"a":1e400}',
        '{"a":"\\ud800"}',
        "[1]",
        "[" * 40 + "]" * 40,
    ],
)
def test_what_the_shortcut_leaves_to_json_loads(text: str) -> None:
    assert decoding._quick_parse(text.encode(), text) is None


def test_an_ordinary_report_takes_the_shortcut() -> None:
    text = json.dumps({"call_id": "c-1", "start": "2024-01-01T00:00:00+00:00", "n": [1, 2.5]})
    assert decoding._quick_parse(text.encode(), text) == json.loads(text)
