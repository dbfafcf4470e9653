"""Token statistics and the per-row size bound, shared by SFT validation (``validation``) and preference
validation (``preference``), so both reports count, round and refuse alike.
"""

from __future__ import annotations

import math

from engine.data.encoding import row_chars
from engine.data.schema import Example, TokenStats
from engine.limits import LimitError, Limits

TOO_LONG_FIX = "Shorten this row or split it into several examples; it was left out without being read further."


def percentile(sorted_values: list[int], q: float) -> int:
    """The q-th percentile of sorted values (nearest rank; 0 for none)."""
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def fill_stats(stats: TokenStats, lengths: list[int]) -> None:
    """Count, min, mean, percentiles and max of ``lengths`` into ``stats``."""
    ordered = sorted(lengths)
    stats.count = len(ordered)
    if ordered:
        stats.min, stats.max = ordered[0], ordered[-1]
        stats.mean = round(sum(ordered) / len(ordered), 1)
        stats.p50, stats.p90, stats.p99 = (percentile(ordered, q) for q in (0.5, 0.9, 0.99))


def too_long(example: Example, lim: Limits) -> str:
    """The refusal for a row over ``max_row_chars`` (naming the limit), or "" when it fits."""
    try:
        lim.check("max_row_chars", row_chars(example), "The row's length in characters", "")
    except LimitError as exc:
        return str(exc).strip()
    return ""
