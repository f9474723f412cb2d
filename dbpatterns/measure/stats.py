"""The one place the lab computes a statistic of a sample: a percentile, as the bench (the
latencies of its Python load) and the chaos suite (how long a node fault stalled the calls)
report them."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``: the value at rank ``round(q% of n)``
    (at least the first, at most the last); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return float(ordered[index])
