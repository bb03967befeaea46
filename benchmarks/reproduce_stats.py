"""The statistics of RESULTS.md: Welch tests with confidence intervals, Holm's correction,
the smallest gap a test detects at 80% power, and the pooled check (one-way ANOVA with
Tukey's HSD). Each is a short function over arrays of per-seed BPC, so a test can
recompute every number the report prints."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8


class Comparison(NamedTuple):
    """``b`` minus ``a`` on one split: positive gap = ``a`` is better (lower BPC)."""

    a: str
    b: str
    gap: float
    low: float  # 95% Welch confidence interval of the gap
    high: float
    p: float  # two-sided Welch t-test
    detectable: float  # smallest |gap| found at 80% power, alpha 0.05 (pooled sd)
    detectable_corrected: float  # the same at the family's strictest Holm level, alpha / m


def welch(x, y):
    """(gap = mean(y) - mean(x), 95% CI low, high, two-sided Welch p)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    gap = float(y.mean() - x.mean())
    if len(x) < 2 or len(y) < 2:
        return gap, math.nan, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = float(stats.ttest_ind(y, x, equal_var=False).pvalue)
    return gap, gap - half, gap + half, p


def detectable_gap(sd, n1, n2, alpha=ALPHA, power=POWER):
    """The smallest true gap a two-sided two-sample t-test at level ``alpha`` detects with
    probability ``power``, for groups of ``n1`` and ``n2`` seeds with common sd ``sd``
    (the noncentral t distribution; no normal approximation)."""
    df = n1 + n2 - 2
    if df < 1 or not sd > 0:
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, df)
    scale = sd * math.sqrt(1 / n1 + 1 / n2)

    def shortfall(gap):
        nc = gap / scale
        # the far tail (rejecting with the wrong sign) is tiny; scipy's nct gives NaN for
        # it at some large noncentralities
        wrong_sign = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc)))
        return stats.nct.sf(crit, df, nc) + wrong_sign - power

    high = scale
    while shortfall(high) < 0:  # power grows with the gap: bracket the root
        high *= 2
        if high > 1e3 * scale:
            return math.nan  # no useful gap: the test can hardly ever reject
    return float(optimize.brentq(shortfall, 1e-12 * scale, high))


def pooled_sd(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ss = (len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)
    return math.sqrt(ss / (len(x) + len(y) - 2))


def compare(a, x, b, y, family_size):
    """A :class:`Comparison` of runs ``x`` (of ``a``) and ``y`` (of ``b``)."""
    gap, low, high, p = welch(x, y)
    sd = pooled_sd(x, y) if min(len(x), len(y)) > 1 else math.nan
    return Comparison(a, b, gap, low, high, p, detectable_gap(sd, len(x), len(y)),
                      detectable_gap(sd, len(x), len(y), alpha=ALPHA / family_size))  # fmt: skip


def holm(pvalues):
    """Holm's step-down adjusted p-values, in the input's order (family-wise error rate)."""
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


class Pooled(NamedTuple):
    """One-way ANOVA over the groups and Tukey's HSD for every pair."""

    names: list
    f: float
    p: float
    tukey_p: np.ndarray  # (k, k)
    tukey_low: np.ndarray  # (k, k): 95% interval of mean[i] - mean[j]
    tukey_high: np.ndarray  # (k, k)


def pooled(groups):
    """``groups``: name -> per-seed BPC. ANOVA F and p, and Tukey HSD p-values and 95%
    intervals for mean(i) - mean(j) (scipy.stats.tukey_hsd)."""
    names = list(groups)
    samples = [np.asarray(groups[n], float) for n in names]
    anova = stats.f_oneway(*samples)
    hsd = stats.tukey_hsd(*samples)
    ci = hsd.confidence_interval(confidence_level=1 - ALPHA)
    return Pooled(names, float(anova.statistic), float(anova.pvalue), hsd.pvalue, ci.low, ci.high)
