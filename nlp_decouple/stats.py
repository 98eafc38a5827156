"""Statistics for comparing methods: a t interval of a mean over seeds, and a paired bootstrap of the
accuracy difference between two methods on the same test examples.

The bootstrap is two-level when several seed pairs are given: each resample draws seed pairs (method seed
s with BP seed s) with replacement *and* test examples with replacement, the same examples for every
pair and both methods. Its spread so reflects both the test set's sampling noise and the seeds' training
noise; with one seed pair it reduces to resampling test examples.
"""
from __future__ import annotations

import math

import numpy as np

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


def verdict(interval: list[float] | None) -> str:
    """'higher' / 'lower' when the interval excludes 0, 'not detectable' when it contains it."""
    if interval is None:
        return "unavailable"
    low, high = interval
    return "higher" if low > 0 else "lower" if high < 0 else "not detectable"
