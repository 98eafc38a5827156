"""stats: the t interval, the paired t test and TOST, Holm, the verdicts and the paired bootstrap against hand
computations, scipy and textbook answers; the verdicts' error rates on simulated seed differences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nlp_decouple.stats import (ALPHA, holm, holm_adjust, paired_bootstrap, paired_test, percentile_interval, t_interval,
                                verdict)

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


def test_right_wherever_bp_is_wrong_is_clearly_higher():
    bp_correct = (np.arange(600) % 4 != 0).astype(int)  # BP wrong on every 4th example: 75%
    method_correct = np.ones(600, dtype=int)
    diff = np.stack([method_correct - bp_correct] * 2)  # two seed pairs, each +25 points
    low, high = percentile_interval(paired_bootstrap(diff, resamples=1000))
    assert 0.19 < low < 0.25 < high < 0.31
    low, high = percentile_interval(paired_bootstrap(-diff, resamples=1000))  # the other way round
    assert -0.31 < low < -0.25 < high < -0.19


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
    assert low < 0 < high
    assert np.all(paired_bootstrap(diff[:1], resamples=100) == 1)  # one constant pair: nothing varies


def test_one_pair_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    diff = rng.choice([-1, 0, 1], p=[0.1, 0.7, 0.2], size=(1, 3000))
    low, high = percentile_interval(paired_bootstrap(diff, resamples=4000, seed=5))
    se = diff.std() / math.sqrt(diff.size)  # standard error of a mean of independent examples
    assert (high - low) == pytest.approx(2 * 1.959964 * se, rel=0.1)
    assert low < diff.mean() < high


# ---------------------------------------------------------------- paired t test, TOST, Holm, verdicts

T_95_4DF = 2.131846786326649  # one-sided 95% Student t quantile with 4 degrees of freedom (tables)


def test_paired_t_interval_of_published_seed_differences():
    # per-seed differences against BP quoted with their paired 95% t intervals, both rounded to two decimals
    assert paired_test([-0.77, -0.58, -1.62], 1.0).t_ci95 == pytest.approx([-2.36, 0.39], abs=0.01)
    assert paired_test([-0.48, -1.48, -1.96], 1.0).t_ci95 == pytest.approx([-3.18, 0.57], abs=0.01)


@pytest.mark.parametrize("diffs, margin", [([0.2, -0.1, 0.4, 0.0, 0.3], 1.0), ([-0.77, -0.58, -1.62], 1.0),
                                           ([1.3, 0.2, 2.9, -0.4], 0.5), ([0.9, 1.1, 1.0, 1.2, 0.8, 1.05], 1.5)])
def test_tost_p_values_are_one_sided_t_tests_at_the_shifted_means(diffs, margin):
    from scipy.stats import t, ttest_1samp

    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) / math.sqrt(n)
    test = paired_test(diffs, margin)
    # by hand: t statistics against -m and +m, their one-sided tails
    assert test.p_above_lower == pytest.approx(t.sf((mean + margin) / se, n - 1), rel=1e-9)
    assert test.p_below_upper == pytest.approx(t.cdf((mean - margin) / se, n - 1), rel=1e-9)
    assert test.p_difference == pytest.approx(2 * t.sf(abs(mean) / se, n - 1), rel=1e-9)
    # scipy's one-sample test on the shifted differences
    assert test.p_above_lower == pytest.approx(ttest_1samp([d + margin for d in diffs], 0, alternative="greater").pvalue)
    assert test.p_below_upper == pytest.approx(ttest_1samp([d - margin for d in diffs], 0, alternative="less").pvalue)
    assert test.p_difference == pytest.approx(ttest_1samp(diffs, 0).pvalue)
    assert test.p_equivalence == max(test.p_above_lower, test.p_below_upper)
    ci90 = ttest_1samp(diffs, 0).confidence_interval(0.90)
    assert test.t_ci90 == pytest.approx([ci90.low, ci90.high]) and test.t_ci95 == pytest.approx(t_interval(diffs))
    assert (test.n, test.mean) == (n, pytest.approx(mean)) and test.p_difference_holm == test.p_difference


def test_tost_at_its_boundary_has_p_alpha_and_matches_the_90_percent_interval():
    z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)  # mean 0, sample sd 1
    se = 0.4 / math.sqrt(5)
    mean = 1.0 - T_95_4DF * se  # the 90% interval's upper end lands exactly on the margin
    test = paired_test((mean + 0.4 * z).tolist(), 1.0)
    assert test.p_below_upper == pytest.approx(0.05, abs=1e-9) and test.t_ci90[1] == pytest.approx(1.0)
    assert test.p_above_lower < 1e-3 and test.p_equivalence == test.p_below_upper


def test_no_spread_gives_the_limiting_p_values():
    same = paired_test([0.0, 0.0, 0.0], 1.0)  # identical predictions on every seed
    assert (same.p_difference, same.p_equivalence) == (1.0, 0.0) and same.t_ci90 == [0.0, 0.0]
    assert verdict(same) == "equivalent within ±1"
    constant = paired_test([0.3] * 5, 1.0)
    assert (constant.p_difference, constant.p_equivalence) == (0.0, 0.0) and verdict(constant) == "higher, within ±1"
    outside = paired_test([-2.0, -2.0], 1.0)
    assert (outside.p_difference, outside.p_equivalence) == (0.0, 1.0) and verdict(outside) == "lower"


def test_holm_on_a_textbook_example():
    # four p-values at α = 0.05: sorted 0.005, 0.01, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1 —
    # the first two are rejected, 0.03 > 0.025 stops the procedure
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([0.2]) == [0.2] and holm([]) == []


def test_holm_rejects_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(1)
    for _ in range(300):
        p = (rng.random(rng.integers(1, 8)) ** 3).tolist()
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        rejected, k = set(), len(p)
        for step, index in enumerate(sorted(range(k), key=lambda i: p[i])):  # Holm (1979), step by step
            if p[index] > alpha / (k - step):
                break
            rejected.add(index)
        assert {i for i, a in enumerate(holm(p)) if a <= alpha} == rejected
        assert all(a >= q for a, q in zip(holm(p), p))


def test_holm_adjust_corrects_each_family_over_the_tested_comparisons():
    tests = [paired_test(d, 1.0) for d in ([0.5, 1.5, 1.0], [0.1], [-0.2, 0.1, 0.0, 0.3], [2.0, 2.5, 3.1])]
    adjusted = holm_adjust(tests)
    assert adjusted[1] is None  # one seed: no test, not part of the family
    present = [t for t in tests if t is not None]
    assert [t.p_difference_holm for t in adjusted if t] == pytest.approx(holm([t.p_difference for t in present]))
    assert [t.p_equivalence_holm for t in adjusted if t] == pytest.approx(holm([t.p_equivalence for t in present]))
    assert [t.p_difference for t in adjusted if t] == [t.p_difference for t in present]  # raw ones kept


def test_verdict_words():
    from dataclasses import replace

    base = paired_test([0.5, 0.7, 0.6], 1.0)
    def at(diff, equiv, mean=0.6):
        return verdict(replace(base, mean=mean, p_difference_holm=diff, p_equivalence_holm=equiv))
    assert at(0.01, 0.5) == "higher" and at(0.01, 0.5, mean=-0.6) == "lower"
    assert at(0.5, 0.01) == "equivalent within ±1" and at(0.5, 0.5) == "inconclusive"
    assert at(0.01, 0.01) == "higher, within ±1" and at(0.01, 0.01, mean=-0.3) == "lower, within ±1"
    assert at(0.05, 0.05) == "higher, within ±1"  # rejected at p ≤ α
    assert verdict(replace(base, margin=0.5, p_difference_holm=0.9, p_equivalence_holm=0.001)) == "equivalent within ±0.5"
    assert verdict(paired_test([0.4], 1.0)) == verdict(None) == "inconclusive (needs ≥ 2 seeds)"
    with pytest.raises(ValueError, match="margin"):
        paired_test([0.1, 0.2], 0.0)


def test_the_bootstrap_excludes_zero_where_the_t_test_does_not():
    # per-seed differences -0.77, -0.58, -1.62 points on 10,000 test examples: each seed's method is wrong
    # where BP is right on that many examples. The bootstrap's seed level only redraws these three, all
    # negative, so its interval stays below 0; the t test over 3 seeds finds no difference
    examples = 10_000
    diff = np.zeros((3, examples), dtype=int)
    for row, points in enumerate((0.77, 0.58, 1.62)):
        diff[row, :round(points * examples / 100)] = -1
    low, high = (100 * v for v in percentile_interval(paired_bootstrap(diff, resamples=2000)))
    assert -1.7 < low and high < -0.5  # inside the range of the three differences, plus example noise
    test = paired_test([-0.77, -0.58, -1.62], 1.0)
    assert test.t_ci95[0] < -2.3 and test.t_ci95[1] > 0.3 and verdict(test) == "inconclusive"


# ---------------------------------------------------------------- simulated seed differences

SIM_SETS = 2000
SEEDS = 5


def _simulate(effect: float, sd_range: tuple[float, float], comparisons: int, seed: int) -> np.ndarray:
    """Verdict kinds of ``SIM_SETS`` simulated reports, each of ``comparisons`` comparisons on ``SEEDS`` seed
    differences drawn normal around ``effect`` with an sd uniform in ``sd_range`` (points) per comparison;
    Holm across each report. Returns a (reports, comparisons) array of "higher"/"lower"/"equivalent"/"none"."""
    rng = np.random.default_rng(seed)
    kinds = np.empty((SIM_SETS, comparisons), dtype=object)
    for r in range(SIM_SETS):
        sds = rng.uniform(*sd_range, size=comparisons)
        diffs = effect + sds[:, None] * rng.standard_normal((comparisons, SEEDS))
        for c, test in enumerate(holm_adjust([paired_test(d.tolist(), 1.0) for d in diffs])):
            word = verdict(test)
            kinds[r, c] = "equivalent" if word.startswith("equivalent") else word.split(",")[0].split()[0]
    return kinds


def _monte_carlo_bound(rate: float) -> float:
    """``rate`` plus three standard errors of a rate estimated from ``SIM_SETS`` draws."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / SIM_SETS)


def test_simulated_null_rarely_gives_higher_or_lower():
    # no true effect; seed-to-seed sd of the differences 0.5-1.5 points, as in real runs. Reports of four
    # comparisons (four methods against BP) with Holm's correction across them
    kinds = _simulate(0.0, (0.5, 1.5), comparisons=4, seed=0)
    false = np.isin(kinds, ["higher", "lower"])
    assert false.mean() <= 0.05  # per comparison (measured 1.2%)
    assert false.any(axis=1).mean() <= _monte_carlo_bound(ALPHA)  # per report: Holm holds it at α (measured 4.7%)
    # one comparison per report: the t test's size is exactly α; the simulation finds it within its error
    single = np.isin(_simulate(0.0, (0.5, 1.5), comparisons=1, seed=1), ["higher", "lower"]).mean()
    assert abs(single - ALPHA) <= _monte_carlo_bound(ALPHA) - ALPHA  # (measured 4.7%)


def test_simulated_equivalence_is_found_when_seeds_agree():
    kinds = _simulate(0.0, (0.3, 0.5), comparisons=1, seed=2)  # no effect, small seed spread, 5 seeds
    assert (kinds == "equivalent").mean() >= 0.9  # (measured 93.8%)
    assert np.isin(kinds, ["higher", "lower"]).mean() <= _monte_carlo_bound(ALPHA)  # a null too: size α


def test_simulated_effect_at_the_margin_is_rarely_called_equivalent():
    for effect in (1.0, -1.0):  # the true difference sits on the margin: equivalence must not be claimed
        kinds = _simulate(effect, (0.5, 1.5), comparisons=4, seed=3)
        claimed = kinds == "equivalent"
        assert claimed.mean() <= 0.05  # per comparison (measured 0.6% and 0.7%)
        assert claimed.any(axis=1).mean() <= _monte_carlo_bound(ALPHA)  # per report (measured 2.1% and 2.7%)
    single = (_simulate(1.0, (0.5, 1.5), comparisons=1, seed=4) == "equivalent").mean()
    assert single <= _monte_carlo_bound(ALPHA)  # (measured 2.9%)
