"""The statistics behind an experiment's verdict, in one place and free of any model or UI.

Why this module exists: "fine-tuning beat RAG" is only worth saying when the difference is larger
than the noise of a few dozen questions, when several comparisons do not add up to a lucky one, and
when an automatic judge is known to agree with the reference answers. Each of those checks is a small
textbook formula; keeping them here (numpy only) lets the report, the CLI and the tests share one
definition and lets the tests check them against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sane for small n and rates near 0 or 1, unlike the normal approximation."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------ paired bootstrap


@dataclass(frozen=True)
class PairedDiff:
    """Two arms scored on the same questions: their means, the mean difference and how sure we are of it.

    ``low``/``high`` bound the mean of ``a - b`` (percentile bootstrap); ``p_value`` is two-sided.
    ``n``, ``resamples`` and ``seed`` are kept so a report states exactly how it was computed.
    """

    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_value: float
    n: int
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDiff:
    """Compare two arms answered on the same questions by resampling the questions.

    Resampling question indices (not each arm separately) keeps the pairing: a hard question is hard
    for both arms, so the difference is far less noisy than two independent intervals suggest.
    The p-value is ``2 * min(share of resampled diffs <= 0, share >= 0)``, each share counted with the
    usual +1 correction ``(k + 1) / (resamples + 1)`` so a finite bootstrap never claims p = 0;
    when every difference is 0 both shares are 1 and p = 1. Deterministic for a fixed ``seed``.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"Paired scores need equal lengths; got {len(a)} and {len(b)}.")
    n = int(x.size)
    if n == 0:
        raise ValueError("Paired bootstrap needs at least one question.")
    if resamples < 1:
        raise ValueError("resamples must be at least 1.")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1.")
    diffs = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diffs[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Round-off in the means of an all-equal sample must not move values off exactly 0.
    tol = 1e-12
    le = (int(np.sum(means <= tol)) + 1) / (resamples + 1)
    ge = (int(np.sum(means >= -tol)) + 1) / (resamples + 1)
    return PairedDiff(
        mean_a=float(x.mean()), mean_b=float(y.mean()), diff=float(diffs.mean()),
        low=float(low), high=float(high), p_value=min(1.0, 2 * min(le, ge)),
        n=n, resamples=resamples, seed=seed,
    )


# ------------------------------------------------------------------------------ multiple testing


@overload
def holm(p_values: Mapping[str, float]) -> dict[str, float]: ...


@overload
def holm(p_values: Sequence[float]) -> list[float]: ...


def holm(p_values: Mapping[str, float] | Sequence[float]) -> dict[str, float] | list[float]:
    """Holm–Bonferroni adjusted p-values, in the shape given (a dict by name, or a list by position).

    An experiment compares several arms; testing each at 0.05 would let one of them "win" by luck.
    Holm's step-down keeps the family-wise error at the nominal level and is never worse than
    Bonferroni: sort ascending, multiply the i-th smallest (0-based) by ``m - i``, then make the
    sequence non-decreasing and cap it at 1.
    """
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    values = [float(p_values[k]) for k in keys] if keys is not None else [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in values):
        raise ValueError("p-values must lie between 0 and 1.")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: values[j])):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    return dict(zip(keys, adjusted, strict=True)) if keys is not None else adjusted


# ------------------------------------------------------------------------------------ agreement


@dataclass(frozen=True)
class Agreement:
    """How two raters (a judge and the reference, a judge and a person) agree, beyond chance.

    ``observed`` is the share of items both gave the same label, ``expected`` the share they would
    agree on by chance given how often each uses each label; ``categories`` are the labels seen (as text).
    """

    kappa: float | None
    observed: float
    expected: float
    n: int
    categories: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> Agreement:
    """Cohen's kappa ``(po - pe) / (1 - pe)`` for two raters labelling the same items.

    Raw agreement flatters a judge that says "correct" to everything when most answers are correct;
    kappa subtracts the agreement expected by chance. ``kappa`` is None (undefined, not 0) when there
    are no items, or when chance agreement is already 1 — both raters used one and the same label for
    every item, so there is nothing beyond chance to measure.
    """
    if len(a) != len(b):
        raise ValueError(f"Both raters must label the same items; got {len(a)} and {len(b)} labels.")
    n = len(a)
    categories = tuple(dict.fromkeys([*a, *b]))
    if n == 0:
        return Agreement(kappa=None, observed=0.0, expected=0.0, n=0, categories=())
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    kappa = None if math.isclose(expected, 1.0, abs_tol=1e-12) else (observed - expected) / (1 - expected)
    return Agreement(kappa=kappa, observed=observed, expected=expected, n=n,
                     categories=tuple(str(c) for c in categories))


# Landis & Koch (1977): upper bound of each band, inclusive.
_KAPPA_BANDS = ((0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"))


def kappa_label(kappa: float | None) -> str:
    """Landis & Koch's words for a kappa, so a non-statistician can read the number."""
    if kappa is None:
        return "undefined"
    if kappa < 0:
        return "poor"
    for upper, word in _KAPPA_BANDS:
        if kappa <= upper:
            return word
    return "almost perfect"
