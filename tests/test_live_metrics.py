"""The quantile of a latency histogram, as the live progress line computes it from ``transforms.live_metrics``."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.live_metrics import quantile

BOUNDS = (0.1, 0.5, 1.0, math.inf)


def test_a_quantile_is_interpolated_within_its_bucket_over_the_interval_only():
    before = {0.1: 10, 0.5: 10, 1.0: 10, math.inf: 10}  # (counted before the interval)
    now = {0.1: 10, 0.5: 60, 1.0: 110, math.inf: 110}
    assert quantile(0.5, now, before) == pytest.approx(0.5)
    assert quantile(0.99, now, before) == pytest.approx(0.5 + 0.5 * 49 / 50)
    assert quantile(0.99, before, before) is None
    assert quantile(0.99, {**now, math.inf: 1000}, before) == math.inf


@given(st.lists(st.integers(0, 1000), min_size=4, max_size=4), st.floats(0.01, 1.0))
def test_a_quantile_lies_within_the_bucket_that_holds_its_rank(increments, q):
    counts = dict(zip(BOUNDS, [sum(increments[:i + 1]) for i in range(4)]))
    found = quantile(q, counts, {})
    if counts[math.inf] == 0:
        assert found is None
        return
    rank = q * counts[math.inf]
    bucket = next(i for i, bound in enumerate(BOUNDS) if counts[bound] >= rank)
    lower = BOUNDS[bucket - 1] if bucket else 0.0
    assert lower <= found <= BOUNDS[bucket]
