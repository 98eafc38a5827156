"""Statistics for comparing methods: a t interval of a mean over seeds; the paired t test and the
equivalence test (two one-sided tests, TOST) on per-seed differences, Holm's correction across the
comparisons of one report, and the verdict they give; a paired bootstrap of the accuracy difference on the
same test examples, kept as a descriptive interval.

Verdicts come from the t tests on the per-seed differences, not from the bootstrap: with S seed pairs the
bootstrap's seed level only ever redraws those S differences, so its seed part can never leave their range;
with 3 seeds that all share a sign (1 time in 4 with no effect at all) it excludes 0 wherever the seed
spread outweighs the test-set noise. The t interval widens by t(n-1) for the few seeds it has.

The bootstrap is two-level when several seed pairs are given: each resample draws seed pairs (method seed
s with BP seed s) with replacement *and* test examples with replacement, the same examples for every
pair and both methods. Its spread so reflects both the test set's sampling noise and the seeds' training
noise; with one seed pair it reduces to resampling test examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

ALPHA = 0.05  # every test's level; the t interval consistent with TOST has level 1 - 2α (90%)
DEFAULT_MARGIN = 1.0  # accuracy points: the equivalence margin when none is declared
MIN_SEEDS = 2  # a t test needs a spread: fewer paired seeds give no test and an "inconclusive" verdict

# beyond this many gathered elements per chunk of resamples the work is split (memory stays ~40 MB)
_CHUNK_ELEMENTS = 4_000_000


def t_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean of ``values`` (None with fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return [mean - half, mean + half]


# ---------------------------------------------------------------- paired t test and TOST

@dataclass(frozen=True)
class PairedTest:
    """One comparison's tests on its per-seed differences d (method − reference, accuracy points).

    ``p_difference``: two-sided t test of mean(d) = 0. ``p_above_lower`` / ``p_below_upper``: the one-sided t
    tests of TOST, H0 mean ≤ −margin against mean > −margin, and H0 mean ≥ +margin against mean < +margin;
    ``p_equivalence`` is the larger of the two (both must reject). ``*_holm``: the same p-values after Holm's
    correction across the comparisons of one report (equal to the raw ones until :func:`holm_adjust` sets
    them). ``t_ci90`` (level 1 − 2α: inside ±margin exactly when TOST rejects, before correction) and
    ``t_ci95`` (excludes 0 exactly when the difference test rejects, before correction) are paired t
    intervals of mean(d), uncorrected."""
    n: int
    mean: float
    sd: float
    margin: float
    p_difference: float
    p_above_lower: float
    p_below_upper: float
    p_equivalence: float
    t_ci90: list[float]
    t_ci95: list[float]
    p_difference_holm: float
    p_equivalence_holm: float


def _t_p(t: float, df: int, alternative: str) -> float:
    """p-value of a t statistic with ``df`` degrees of freedom (scipy's Student t cdf; ±inf gives 0 or 1)."""
    from scipy.special import stdtr  # the Student t cdf as a ufunc: microseconds, where scipy.stats takes ~1 ms

    if alternative == "greater":
        return float(stdtr(df, -t))
    if alternative == "less":
        return float(stdtr(df, t))
    return float(min(1.0, 2 * stdtr(df, -abs(t))))


def _one_sample_p(mean: float, se: float, df: int, popmean: float, alternative: str) -> float:
    """p of the one-sample t test of ``mean`` against ``popmean`` (as scipy.stats.ttest_1samp). With no spread
    at all (se 0) the statistic is ±inf, or undefined at ``mean == popmean``; the p-value is then its limit:
    0 when the mean lies strictly on the alternative's side, else 1."""
    gap = mean - popmean
    if se > 0:
        return _t_p(gap / se, df, alternative)
    hit = {"two-sided": gap != 0, "greater": gap > 0, "less": gap < 0}[alternative]
    return 0.0 if hit else 1.0


def paired_test(diffs: list[float], margin: float) -> PairedTest | None:
    """The difference test, TOST at ±``margin`` and the paired t intervals of ``diffs`` (None with fewer than
    :data:`MIN_SEEDS` differences)."""
    from scipy.special import stdtrit  # the Student t quantile

    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    n = len(diffs)
    if n < MIN_SEEDS:
        return None
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se, df = sd / math.sqrt(n), n - 1
    lower = _one_sample_p(mean, se, df, -margin, "greater")
    upper = _one_sample_p(mean, se, df, margin, "less")
    p_difference, p_equivalence = _one_sample_p(mean, se, df, 0.0, "two-sided"), max(lower, upper)
    half90, half95 = (float(stdtrit(df, 1 - tail)) * se for tail in (ALPHA, ALPHA / 2))
    return PairedTest(n=n, mean=mean, sd=sd, margin=margin,
                      p_difference=p_difference, p_above_lower=lower, p_below_upper=upper, p_equivalence=p_equivalence,
                      t_ci90=[mean - half90, mean + half90], t_ci95=[mean - half95, mean + half95],
                      p_difference_holm=p_difference, p_equivalence_holm=p_equivalence)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: sorted ascending, the i-th smallest (from 1)
    becomes ``min(1, max over j <= i of (k - j + 1) p_(j))`` for k p-values. Rejecting where the adjusted
    p is ≤ α keeps the chance of any false rejection among the k at most α."""
    k = len(pvalues)
    adjusted, running = [0.0] * k, 0.0
    for rank, index in enumerate(sorted(range(k), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (k - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def holm_adjust(tests: list[PairedTest | None]) -> list[PairedTest | None]:
    """The tests with their Holm-adjusted p-values: one family of the difference tests and one of the
    equivalence tests, each over the comparisons that have a test (None stays None)."""
    present = [t for t in tests if t is not None]
    difference = iter(holm([t.p_difference for t in present]))
    equivalence = iter(holm([t.p_equivalence for t in present]))
    return [None if t is None else replace(t, p_difference_holm=next(difference), p_equivalence_holm=next(equivalence))
            for t in tests]


def verdict(test: PairedTest | None) -> str:
    """One verdict from the Holm-adjusted p-values. "higher" / "lower": the difference test rejects mean 0;
    "equivalent within ±m": both one-sided tests reject |mean| ≥ m; "higher, within ±m" / "lower, within
    ±m": both (a detectable difference smaller than the margin); "inconclusive": neither, or fewer than
    :data:`MIN_SEEDS` paired seeds."""
    if test is None:
        return f"inconclusive (needs ≥ {MIN_SEEDS} seeds)"
    differs, equivalent = test.p_difference_holm <= ALPHA, test.p_equivalence_holm <= ALPHA
    within = f"within ±{test.margin:g}"
    direction = "higher" if test.mean > 0 else "lower"
    if differs:
        return f"{direction}, {within}" if equivalent else direction
    return f"equivalent {within}" if equivalent else "inconclusive"


# ---------------------------------------------------------------- paired bootstrap (descriptive)

def paired_bootstrap(diff, resamples: int = 2000, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """Bootstrap replicates of the mean accuracy difference.

    ``diff``: shape (seed pairs, test examples), per example ``correct(method) - correct(reference)`` (-1, 0 or
    1), one row per seed pair, every row on the same examples in the same order. Resample r takes
    ``S + N`` uniforms u from ``np.random.default_rng(seed).random`` in turn: the first S pick seed pairs
    (``floor(u·S)``), the next N pick examples (``floor(u·N)``). Its replicate is the mean over the picked
    pairs of each pair's mean difference on the picked examples. ``chunk`` (resamples computed at once)
    changes memory use, never the result.
    """
    diff = np.asarray(diff, dtype=np.int8)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"diff must be a non-empty (seed pairs, examples) array, got shape {diff.shape}")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    pairs, examples = diff.shape
    chunk = chunk or max(1, _CHUNK_ELEMENTS // diff.size)
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    for start in range(0, resamples, chunk):
        u = rng.random((min(chunk, resamples - start), pairs + examples))
        pick_pairs = np.minimum((u[:, :pairs] * pairs).astype(np.intp), pairs - 1)  # min: rounding guard
        pick_examples = np.minimum((u[:, pairs:] * examples).astype(np.intp), examples - 1)
        per_pair = diff[:, pick_examples].sum(-1, dtype=np.int64) / examples  # (pairs, chunk)
        replicates[start:start + len(u)] = np.take_along_axis(per_pair.T, pick_pairs, 1).mean(1)
    return replicates


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]
