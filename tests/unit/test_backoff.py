"""Backoff: full jitter within min(cap, base * 2**n), attempts from 0, no overflow."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botd.backoff import Backoff

bases = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    base=bases,
    factor=st.floats(min_value=1.0, max_value=1e6),
    attempt=st.integers(min_value=0, max_value=10**30),
    seed=st.integers(),
)
def test_delay_within_ceiling_for_any_attempt(
    base: float, factor: float, attempt: int, seed: int
) -> None:
    cap = base * factor
    backoff = Backoff(base, cap, rng=random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert math.isfinite(ceiling)
    # for attempt >= 100 the 2**n term is far past any cap these strategies draw
    assert ceiling == (min(cap, base * 2**attempt) if attempt < 100 else cap)
    delay = backoff.delay(attempt)
    assert 0.0 <= delay <= ceiling


@given(base=bases, factor=st.floats(min_value=1.0, max_value=1e6))
def test_ceiling_grows_monotonically_to_the_cap(base: float, factor: float) -> None:
    backoff = Backoff(base, base * factor)
    ceilings = [backoff.ceiling(n) for n in range(200)]
    assert ceilings[0] == base
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] == base * factor


def test_seed_schedule_1_2_4_8_then_60() -> None:
    backoff = Backoff(1.0, 60.0)
    assert [backoff.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_full_jitter_spreads_over_the_whole_window() -> None:
    backoff = Backoff(1.0, 60.0, rng=random.Random(7))
    delays = [backoff.delay(3) for _ in range(2000)]
    assert max(delays) <= 8.0
    # full jitter, not "equal jitter": both halves of [0, 8] are used
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_seeded_rng_is_reproducible() -> None:
    a = Backoff(0.5, 10.0, rng=random.Random(1))
    b = Backoff(0.5, 10.0, rng=random.Random(1))
    assert [a.delay(n) for n in range(20)] == [b.delay(n) for n in range(20)]


@pytest.mark.parametrize(
    ("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (math.nan, 1.0), (1.0, math.inf)]
)
def test_bad_parameters_raise(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)


def test_negative_attempt_raises() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(1.0, 2.0).delay(-1)
