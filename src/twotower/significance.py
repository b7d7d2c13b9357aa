"""Paired significance tests for comparing two configurations: pure functions of arrays.

A comparison pairs the same units under both configurations (users, or seeds) and tests the
differences ``d = candidate - baseline``:
  - paired t-test: ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom, two-sided;
  - Wilcoxon signed-rank test (zero differences dropped; scipy's exact distribution for few
    pairs without ties, else the normal approximation with tie and continuity corrections):
    for metrics far from normal, as per-user recall is;
  - effect size: Cohen's ``d_z = mean(d) / sd(d)`` and the 95% confidence interval of ``mean(d)``;
  - Holm's step-down correction of a family of p-values (controls the family-wise error rate).
No difference at all (every ``d`` zero) has p = 1 and effect 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


TOLERANCE = 1e-12  # differences (and spreads of differences) this small are floating-point rounding


@dataclass(frozen=True)
class PairedResult:
    """``n`` pairs; ``mean``: mean difference; ``ci_low`` / ``ci_high``: its 95% confidence
    interval (t); ``effect``: Cohen's d_z; ``statistic`` and two-sided ``p`` of the test."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    effect: float
    statistic: float
    p: float


def paired_t_test(candidate: np.ndarray, baseline: np.ndarray) -> PairedResult:
    """Paired t-test of ``candidate - baseline`` (``[n]`` each, n >= 2)."""
    from scipy.stats import t as student_t

    d = _differences(candidate, baseline)
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    if np.ptp(d) <= TOLERANCE:  # every pair differs by the same amount: no spread to weigh it against
        statistic = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedResult(n, mean, mean, mean, 0.0 if mean == 0.0 else statistic, statistic, 1.0 if mean == 0.0 else 0.0)
    se = sd / math.sqrt(n)
    statistic = mean / se
    half = float(student_t.ppf(0.975, n - 1)) * se
    p = float(2 * student_t.sf(abs(statistic), n - 1))
    return PairedResult(n, mean, mean - half, mean + half, mean / sd, statistic, p)


def wilcoxon_test(candidate: np.ndarray, baseline: np.ndarray) -> PairedResult:
    """Wilcoxon signed-rank test of ``candidate - baseline``; ``statistic``: scipy's (the smaller
    rank sum); mean, interval and effect as :func:`paired_t_test`'s."""
    from scipy.stats import wilcoxon

    described = paired_t_test(candidate, baseline)
    d = _differences(candidate, baseline)
    if not np.any(d != 0):
        return described
    result = wilcoxon(d[d != 0], correction=True)
    return PairedResult(described.n, described.mean, described.ci_low, described.ci_high, described.effect,
                        float(result.statistic), float(result.pvalue))  # fmt: skip


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given (NaN stays NaN and does not count): the i-th
    smallest of m is multiplied by ``m - i`` (0-based), then made non-decreasing, capped at 1."""
    present = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    present.sort()
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def _differences(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    candidate, baseline = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if candidate.shape != baseline.shape or candidate.ndim != 1 or len(candidate) < 2:
        raise ValueError(f"a paired test needs two 1-D arrays of the same length >= 2; got {candidate.shape} and {baseline.shape}")
    d = candidate - baseline
    return np.where(np.abs(d) <= TOLERANCE, 0.0, d)  # rounding, not a difference (0.3 + 0.1 - 0.1 != 0.3)

