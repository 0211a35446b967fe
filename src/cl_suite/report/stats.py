"""Each configuration against a baseline: the difference of means with a 95% t-interval over seeds.

Runs that share a seed share their initialisation and data order, so where the two configurations have
at least two seeds in common the difference is taken seed by seed (a paired t-interval over the
common seeds); otherwise the two sets of seeds are compared as independent samples (Welch's t-interval).
The verdict is "better" or "worse" when the interval excludes 0 (in the metric's direction: lower is
better for losses and FPR) and "within noise" when it contains 0. An interval of zero width around a
non-zero difference (every seed's difference the same, common with two seeds and accuracies that move in
steps of one test image) is no evidence of a difference: its verdict is "n/a (no spread)".
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
BASELINE = "baseline"
WITHIN_NOISE = "within noise"
NO_SPREAD = "n/a (no spread)"


def t_quantile(df: float) -> float:
    """The two-sided ``CONFIDENCE`` critical value of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn; imported here to keep the report's start-up light

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def mean_halfwidth(std: float, n: int) -> float:
    """Half-width of the 95% t-interval of a mean of ``n`` values with sample std ``std``; NaN for n < 2."""
    if n < 2 or math.isnan(std):
        return math.nan
    return t_quantile(n - 1) * std / math.sqrt(n)


@dataclass(frozen=True)
class Comparison:
    """``diff`` = configuration - baseline (mean of the per-seed differences when paired) and its
    interval ``[low, high]`` (NaN when there is none). ``test`` is ``paired``, ``welch``, ``baseline``
    or ``none``; ``n_pairs`` the seeds the paired test used (0 otherwise); ``n`` and ``n_base`` the
    values of each side that entered it."""

    diff: float
    low: float
    high: float
    test: str
    n_pairs: int
    n: int
    n_base: int
    verdict: str

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def describe(self) -> str:
        if self.test == "paired":
            return f"paired t, n={self.n_pairs}"
        if self.test == "welch":
            return f"Welch t, n={self.n} vs {self.n_base}"
        return "-"


def verdict(diff: float, low: float, high: float, lower_better: bool) -> str:
    if low <= 0.0 <= high:
        return WITHIN_NOISE
    if high - low <= 1e-9 * max(1.0, abs(diff)):  # zero spread up to float rounding: the interval says nothing
        return NO_SPREAD
    improved = diff < 0 if lower_better else diff > 0
    return "better" if improved else "worse"


def compare(values: dict, base: dict, lower_better: bool) -> Comparison:
    """``values`` and ``base``: ``{seed: value}`` of the configuration and of the baseline (seed None:
    unknown, never paired). Paired over the common seeds when there are at least two, else Welch."""
    nan = math.nan
    xs, bs = list(values.values()), list(base.values())
    if not xs or not bs:
        return Comparison(nan, nan, nan, "none", 0, len(xs), len(bs), "n/a (no values)")
    common = [s for s in values if s is not None and s in base]
    if len(common) >= 2:
        diffs = [values[s] - base[s] for s in common]
        mean, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        return Comparison(mean, mean - half, mean + half, "paired", n, n, n,
                          verdict(mean, mean - half, mean + half, lower_better))
    diff = statistics.fmean(xs) - statistics.fmean(bs)
    if len(xs) < 2 or len(bs) < 2:
        n_pairs = len(common)
        test = "paired" if n_pairs else "none"
        if n_pairs:  # one common seed: its difference, without an interval
            diff = values[common[0]] - base[common[0]]
        return Comparison(diff, nan, nan, test, n_pairs, len(xs), len(bs), "n/a (1 seed)")
    va, vb = statistics.variance(xs) / len(xs), statistics.variance(bs) / len(bs)
    se = math.sqrt(va + vb)
    if se == 0.0:
        half = 0.0
    else:  # Welch-Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va ** 2 / (len(xs) - 1) + vb ** 2 / (len(bs) - 1))
        half = t_quantile(df) * se
    return Comparison(diff, diff - half, diff + half, "welch", 0, len(xs), len(bs),
                      verdict(diff, diff - half, diff + half, lower_better))


def baseline_comparison(n: int) -> Comparison:
    return Comparison(0.0, math.nan, math.nan, BASELINE, 0, n, n, BASELINE)
