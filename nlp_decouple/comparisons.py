"""Each method against BP of its encoder, paired by seed: the per-seed differences, the paired t test and
equivalence test (TOST) on them with Holm's correction across the report's comparisons, the verdict, and
the two-level paired bootstrap interval on the same test examples (descriptive; ``nlp_decouple.stats``)."""
from __future__ import annotations

import statistics

import numpy as np

from .report_data import Group, MethodRow, Run, VsBP
from .stats import holm_adjust, paired_bootstrap, paired_test, percentile_interval, verdict


def against_bp(group: Group, bp: Group, margin: float, resamples: int = 2000, seed: int = 0) -> VsBP:
    """The method minus BP (percentage points), paired by seed, with its uncorrected tests (the verdict
    is set after Holm's correction, by :func:`add_comparisons`) and a paired bootstrap interval of the
    accuracy difference when every paired run has usable per-example test predictions."""
    mine, ref = ({r.results["seed"]: r for r in g.runs} for g in (group, bp))
    seeds = sorted(mine.keys() & ref.keys())
    diffs = {key: [100 * (mine[s].results[key] - ref[s].results[key]) for s in seeds]
             for key in ("test_accuracy", "test_macro_f1")}
    correct, note = _correctness([mine[s] for s in seeds] + [ref[s] for s in seeds]) if seeds else (
        None, f"no seed in common with {bp.label}")
    interval = None
    if correct is not None:
        replicates = paired_bootstrap(correct[:len(seeds)] - correct[len(seeds):], resamples, seed)
        interval = [100 * v for v in percentile_interval(replicates)]
    test = paired_test(diffs["test_accuracy"], margin)
    tuned = all(r.tuned_recipe() for r in (*group.runs, *bp.runs))
    return VsBP(reference=bp.label, seeds=seeds, test_accuracy_diff=diffs["test_accuracy"],
                test_macro_f1_diff=diffs["test_macro_f1"],
                test_accuracy_diff_mean=statistics.fmean(diffs["test_accuracy"]) if seeds else None,
                test_macro_f1_diff_mean=statistics.fmean(diffs["test_macro_f1"]) if seeds else None,
                test=test, bootstrap_ci95=interval, verdict=verdict(test), note=note, tuned=tuned)


def _correctness(runs: list[Run]) -> tuple[np.ndarray | None, str | None]:
    """Per run, per test example: 1 if predicted right. None (and why) when the runs cannot be paired
    example by example."""
    rows, labels = [], None
    for run in runs:
        p, name = run.predictions, run.path.name if run.path else "a run"
        if p is None:
            return None, f"{name} has no test_predictions.json (trained before it was saved)"
        if p["epoch"] != run.results["best_epoch"]:
            return None, f"{name}: test_predictions.json is not from the best epoch"
        if labels is None:
            labels = np.asarray(p["labels"])
        elif not np.array_equal(labels, p["labels"]):
            return None, f"{name} was tested on other examples (or in another order)"
        correct = np.asarray(p["predictions"]) == labels
        if abs(correct.mean() - run.results["test_accuracy"]) > 1e-6:
            return None, f"{name}: test_predictions.json disagrees with results.json"
        rows.append(correct)
    return np.asarray(rows, dtype=np.int8), None


def add_comparisons(groups: list[Group], rows: list[MethodRow], margin: float, resamples: int, seed: int) -> int:
    """Set each row's ``vs_bp`` against the BP group of its encoder (None for BP and where BP is absent),
    its p-values Holm-adjusted over every comparison of the report that has a test, and its verdict.
    Returns that number of comparisons."""
    bp = {g.runs[0].key[0]: g for g in groups if g.runs[0].key[1] == "bp"}
    for g, row in zip(groups, rows):
        encoder, method = g.runs[0].key
        row.vs_bp = against_bp(g, bp[encoder], margin, resamples, seed) if method != "bp" and encoder in bp else None
    compared = [row.vs_bp for row in rows if row.vs_bp]
    for vs, test in zip(compared, holm_adjust([vs.test for vs in compared])):
        vs.test, vs.verdict = test, verdict(test)
    return sum(vs.test is not None for vs in compared)
