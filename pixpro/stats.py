"""Statistics over seeds: Student's t quantile, mean ± std with a t-interval, paired differences
and their verdict. Pure functions of numbers and pandas Series; nothing here reads files.

Used by `pixpro compare` (DVC experiments, result CSVs) and by the docs' table generator
(experiments/results_doc.py). Scores are whatever unit the caller passes; a difference is
always "ours − theirs" of the same seed.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import pandas as pd

CONFIDENCE = 0.95

# --------------------------------------------------------------------------------------------
# Student's t quantile (scipy is not a dependency; torch's StudentT has no icdf)
# --------------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` > 0 degrees of freedom (bisection on the CDF,
    to ~1e-12). t_quantile(0.975, 2) = 4.3027."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # the bracket grows to ~6e5 for df=1, p=0.9999995
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


# --------------------------------------------------------------------------------------------
# Summaries, paired differences, verdicts
# --------------------------------------------------------------------------------------------


class Summary(NamedTuple):
    """n values: their mean, sample std (ddof=1) and the two-sided t-interval of the mean.
    std, low and high are NaN when n < 2: one value says nothing about the spread."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std (ddof=1) and the `confidence` t-interval mean ± t(n-1) · std / sqrt(n).
    NaNs are dropped (a missing score is not a zero)."""
    data = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
    n = len(data)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(data) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_differences(ours: pd.Series, theirs: pd.Series) -> pd.Series:
    """ours − theirs per seed, over the seeds both have (the index is the seed; values of a seed
    that appears more than once are averaged first). Sorted by seed; (n_shared,)."""
    ours, theirs = ours.groupby(level=0).mean(), theirs.groupby(level=0).mean()
    shared = ours.index.intersection(theirs.index).sort_values()
    return ours[shared] - theirs[shared]


def paired_summary(ours: pd.Series, theirs: pd.Series, confidence: float = CONFIDENCE) -> Summary:
    """The summary of `paired_differences(ours, theirs)`: mean, std and t-interval of the
    per-seed difference, not the difference of two means with both spreads."""
    return summarize(paired_differences(ours, theirs), confidence)


def verdict(summary: Summary) -> str:
    """'better' / 'worse' when the interval excludes 0; 'unclear' when it includes 0 or there is
    no interval (fewer than 2 values): the seeds cannot tell the difference from noise."""
    if summary.n < 2 or math.isnan(summary.low):
        return "unclear"
    if summary.low > 0:
        return "better"
    if summary.high < 0:
        return "worse"
    return "unclear"


def format_summary(summary: Summary, scale: float = 100.0, sign: bool = False, digits: int = 2,
                   separator: str = " ") -> str:
    """'17.45 ± 0.40 [16.45, 18.45]' (scaled, by default fractions to points); '17.45 ± n/a'
    without an interval; 'n/a' without values."""
    if summary.n == 0 or math.isnan(summary.mean):
        return "n/a"
    spec = f"+.{digits}f" if sign else f".{digits}f"
    mean = f"{summary.mean * scale:{spec}}"
    if math.isnan(summary.std):
        return f"{mean} ± n/a"
    return (f"{mean} ± {summary.std * scale:.{digits}f}{separator}"
            f"[{summary.low * scale:{spec}}, {summary.high * scale:{spec}}]")
