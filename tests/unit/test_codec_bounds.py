"""The border's JSON bounds (botd.codec.check_json, botd.server.wire.decode_body), as
properties: any JSON within the bounds round-trips; any value out of bounds is a 400
invalid_request naming its path, never another error."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botd import codec
from botd.errors import EncodeError, HttpError
from botd.models import JobSubmit
from botd.server.wire import decode_body

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(codec.INT_MIN, codec.INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=20,
)


@given(_json)
def test_json_within_bounds_round_trips(payload: Any) -> None:
    raw = codec.dumps({"kind": "k", "payload": payload})
    job = decode_body(raw, JobSubmit)
    assert job.payload == payload
    assert json.loads(codec.dumps(job))["payload"] == payload


_bad_leaves = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", str(2**63), str(-(2**63) - 1), '"\\ud800"']
)


@st.composite
def _poisoned(draw: st.DrawFn) -> tuple[str, str]:
    """A JSON text of a payload with one bad leaf somewhere, and that leaf's path."""
    steps = draw(
        st.lists(
            st.one_of(st.integers(0, 2), _text.filter(lambda s: s.isascii() and s.isidentifier())),
            max_size=5,
        )
    )
    text, path = draw(_bad_leaves), ""
    for step in reversed(steps):
        if isinstance(step, int):
            text = "[" + "0," * step + text + "]"
        else:
            text = "{" + json.dumps(step) + ":" + text + "}"
    for step in steps:
        path += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text, "$.payload" + path


@given(_poisoned())
def test_a_bad_value_anywhere_is_400_naming_its_path(case: tuple[str, str]) -> None:
    text, path = case
    with pytest.raises(HttpError) as caught:
        decode_body(b'{"kind":"k","payload":' + text.encode() + b"}", JobSubmit)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert f"{path}:" in caught.value.message


@given(st.integers(65, 3000))
def test_too_deep_is_400_at_any_depth(depth: int) -> None:
    raw = b'{"kind":"k","payload":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(HttpError) as caught:
        decode_body(raw, JobSubmit)
    assert caught.value.status == 400
    assert "deeper than 64" in caught.value.message


def test_64_levels_are_accepted() -> None:
    raw = b'{"kind":"k","payload":' + b"[" * 63 + b"]" * 63 + b"}"
    assert decode_body(raw, JobSubmit).kind == "k"


def test_dumps_refuses_nan_with_a_botd_error_naming_the_path() -> None:
    with pytest.raises(EncodeError, match=r"\$\.result\.a\[1\]: nan"):
        codec.dumps({"result": {"a": [1, math.nan]}})
    with pytest.raises(ValueError, match=r"\$\[0\]: inf"):  # an EncodeError is one too
        codec.dumps([math.inf])
    with pytest.raises(EncodeError, match="not JSON data"):
        codec.dumps({"x": object()})
