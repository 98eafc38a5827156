"""stats: the t interval and the paired bootstrap against hand computations on known inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nlp_decouple.stats import paired_bootstrap, percentile_interval, t_interval, verdict

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles (tables), by degrees of freedom


@pytest.mark.parametrize("values", [[80.0, 82.0, 84.0], [71.5, 70.25, 73.0, 69.75, 72.5]])
def test_t_interval_matches_a_hand_computation(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    assert t_interval(values) == pytest.approx([mean - half, mean + half], abs=1e-9)
    assert t_interval([80.0, 82.0, 84.0]) == pytest.approx([82 - 4.968275, 82 + 4.968275], abs=1e-6)


def test_t_interval_needs_two_seeds():
    assert t_interval([81.0]) is None and t_interval([]) is None


def test_identical_predictions_give_zero_and_a_degenerate_interval():
    replicates = paired_bootstrap(np.zeros((3, 500)), resamples=300)
    assert np.all(replicates == 0)
    assert percentile_interval(replicates) == [0.0, 0.0]
    assert verdict([0.0, 0.0]) == "not detectable"


def test_right_wherever_bp_is_wrong_is_clearly_higher():
    bp_correct = (np.arange(600) % 4 != 0).astype(int)  # BP wrong on every 4th example: 75%
    method_correct = np.ones(600, dtype=int)
    diff = np.stack([method_correct - bp_correct] * 2)  # two seed pairs, each +25 points
    low, high = percentile_interval(paired_bootstrap(diff, resamples=1000))
    assert 0.19 < low < 0.25 < high < 0.31
    assert verdict([low, high]) == "higher"
    low, high = percentile_interval(paired_bootstrap(-diff, resamples=1000))  # the other way round
    assert verdict([low, high]) == "lower" and high < -0.19


def test_vectorised_bootstrap_equals_a_slow_loop_on_the_same_draws():
    diff = np.random.default_rng(7).integers(-1, 2, size=(3, 40))
    pairs, examples = diff.shape
    rng = np.random.default_rng(11)
    expected = []
    for _ in range(150):  # resample by resample: seed pairs first, then examples, one uniform each
        picked_pairs = [int(rng.random() * pairs) for _ in range(pairs)]
        picked = [int(rng.random() * examples) for _ in range(examples)]
        expected.append(sum(sum(int(diff[p, i]) for i in picked) / examples for p in picked_pairs) / pairs)
    assert paired_bootstrap(diff, resamples=150, seed=11) == pytest.approx(expected, abs=1e-12)
    assert np.array_equal(paired_bootstrap(diff, resamples=150, seed=11, chunk=7),
                          paired_bootstrap(diff, resamples=150, seed=11))  # chunking never changes a result


def test_seed_pairs_are_resampled_as_well_as_examples():
    # each pair's difference is the same on every example: resampling examples alone would give a zero-width
    # interval; only resampling the pairs (+1, -1, 0 points) spreads it
    diff = np.repeat([[1], [-1], [0]], 50, axis=1)
    replicates = paired_bootstrap(diff, resamples=500)
    assert set(np.round(replicates * 3).astype(int)) <= {-3, -2, -1, 0, 1, 2, 3}
    low, high = percentile_interval(replicates)
    assert low < 0 < high and verdict([low, high]) == "not detectable"
    assert np.all(paired_bootstrap(diff[:1], resamples=100) == 1)  # one constant pair: nothing varies


def test_one_pair_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    diff = rng.choice([-1, 0, 1], p=[0.1, 0.7, 0.2], size=(1, 3000))
    low, high = percentile_interval(paired_bootstrap(diff, resamples=4000, seed=5))
    se = diff.std() / math.sqrt(diff.size)  # standard error of a mean of independent examples
    assert (high - low) == pytest.approx(2 * 1.959964 * se, rel=0.1)
    assert low < diff.mean() < high


def test_verdict_and_bad_inputs():
    assert verdict([0.0, 1.5]) == "not detectable" and verdict([-2.0, -0.1]) == "lower"
    assert verdict([0.1, 2.0]) == "higher" and verdict(None) == "unavailable"
    with pytest.raises(ValueError, match="seed pairs, examples"):
        paired_bootstrap(np.zeros(10))
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(np.zeros((1, 10)), resamples=0)
