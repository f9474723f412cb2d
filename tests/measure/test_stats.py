"""The one percentile of the lab: the sample at the rank the bench has always reported."""

from __future__ import annotations

from dbpatterns.measure import stats


def test_percentiles_pick_the_sample_at_that_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert stats.percentile(samples, 50) == 50.0
    assert stats.percentile(samples, 99) == 99.0
    assert stats.percentile([], 99) == 0.0


def test_a_percentile_does_not_depend_on_the_order_of_the_samples() -> None:
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert stats.percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert stats.percentile([3.0, 1.0, 2.0], 0) == 1.0  # at least the first
