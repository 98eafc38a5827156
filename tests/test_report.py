"""report: the table, report.json and plots agree with the runs' own results.json; the comparisons against BP
carry the paired t test, TOST and Holm's correction, and say so."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from conftest import SWEEP_METHODS, SWEEP_SEEDS
from nlp_decouple.errors import UserError
from nlp_decouple.report import build_report
from nlp_decouple.report_data import MethodRow, Run
from nlp_decouple.report_markdown import markdown_table, shared_settings
from nlp_decouple.stats import holm, holm_adjust, paired_test, t_interval, verdict

NAMES = {"bp": "BP", "early_exit": "Early Exit", "al": "AL"}


def test_report_numbers_match_every_runs_results(tiny_sweep, tmp_path):
    runs = sorted(p for p in tiny_sweep.iterdir() if (p / "results.json").is_file())
    report = build_report(runs, tmp_path / "report", "tiny")
    assert [r["method"] for r in report["rows"]] == SWEEP_METHODS  # in the canonical method order
    assert report["schema_version"] == 2 and report["statistics"]["comparisons"] == len(SWEEP_METHODS) - 1
    tests = {r["method"]: r["vs_bp"]["test"] for r in report["rows"] if r["vs_bp"]}
    raw = {r["method"]: paired_test(r["vs_bp"]["test_accuracy_diff"], 1.0) for r in report["rows"] if r["vs_bp"]}
    assert [t["p_difference_holm"] for t in tests.values()] == pytest.approx(holm([t.p_difference for t in raw.values()]))
    assert [t["p_equivalence_holm"] for t in tests.values()] == pytest.approx(holm([t.p_equivalence for t in raw.values()]))
    for row in report["rows"]:
        results = [json.loads((tiny_sweep / f"{row['method']}-seed{s}" / "results.json").read_text())
                   for s in SWEEP_SEEDS]
        acc = [100 * r["test_accuracy"] for r in results]
        assert row["seeds"] == SWEEP_SEEDS
        assert row["test_accuracy_mean"] == pytest.approx(statistics.fmean(acc))
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(acc))
        assert row["test_macro_f1_mean"] == pytest.approx(statistics.fmean(100 * r["test_macro_f1"] for r in results))
        assert row["time_per_epoch_s"] == pytest.approx(statistics.fmean(r["time_per_epoch_s"] for r in results))
        assert row["peak_memory_mb"] == pytest.approx(statistics.fmean(r["peak_memory_mb"] for r in results))
        assert row["num_parameters"] == results[0]["num_parameters"]
        layer = row["groups_test_accuracy"]  # embedding + 2 BiLSTM blocks
        assert [g["group"] for g in layer] == [0, 1, 2]
        assert layer[-1]["test_accuracy"] == pytest.approx(row["test_accuracy_mean"])
        assert row["test_accuracy_ci95"] == pytest.approx(t_interval(acc))
        if row["method"] == "bp":
            assert row["vs_bp"] is None
            continue
        bp = [json.loads((tiny_sweep / f"bp-seed{s}" / "results.json").read_text()) for s in SWEEP_SEEDS]
        vs = row["vs_bp"]  # every run saved its test predictions, consistent with its results.json
        assert vs["seeds"] == SWEEP_SEEDS and vs["note"] is None
        assert vs["test_accuracy_diff"] == pytest.approx([a - 100 * b["test_accuracy"] for a, b in zip(acc, bp)])
        assert vs["bootstrap_ci95"][0] <= vs["bootstrap_ci95"][1]
        assert vs["test"]["p_difference"] == pytest.approx(raw[row["method"]].p_difference)
        assert vs["test"]["t_ci90"] == pytest.approx(raw[row["method"]].t_ci90)
        assert vs["tuned"] is False  # the quickstart recipe was not written by tune
    settings = report["settings"]  # BiLSTM runs: the LSTM's pooling is shown, no Transformer-only setting
    assert settings["model.encoder"] == "lstm" and "model.lstm_pooling" in settings
    assert not {"model.norm", "model.pooling", "model.num_heads"} & set(settings)
    kinds = {r["method"]: [g["kind"] for g in r["groups_test_accuracy"]] for r in report["rows"]}
    assert kinds == {"bp": ["probe", "probe", "exit"], "early_exit": ["exit"] * 3, "al": ["exit"] * 3}

    out = tmp_path / "report"
    assert json.loads((out / "report.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    text = (out / "report.md").read_text()
    for row in report["rows"]:
        line = next(l for l in text.splitlines() if l.startswith(f"| {NAMES[row['method']]} |"))
        assert f"{row['test_accuracy_mean']:.2f} ± {row['test_accuracy_std']:.2f}" in line
    for name in ("val_accuracy", "layerwise", "speed_memory", "confusion"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({name}.png)" in text
        import matplotlib.image

        pixels = matplotlib.image.imread(str(png))
        assert pixels.shape[0] > 200 and np.ptp(pixels) > 0.5  # a real picture, not a blank canvas


def test_shared_settings_show_only_what_applies_to_the_runs_encoders():
    def run(encoder: str, lr: float) -> Run:
        config = {"model": {"encoder": encoder, "norm": "pre", "pooling": "mean", "lstm_pooling": "last",
                            "num_heads": 4}, "train": {"lr": lr}}
        return Run(None, {}, [], config)

    same, differ = shared_settings([run("transformer", 1e-3), run("transformer", 3e-3)])
    assert same == {"model.encoder": "transformer", "model.norm": "pre", "model.pooling": "mean",
                    "model.num_heads": 4}
    assert differ == ["train.lr"]
    same, differ = shared_settings([run("transformer", 1e-3), run("lstm", 1e-3)])  # mixed: neither's own
    assert same == {"train.lr": 1e-3} and differ == ["model.encoder"]


def test_best_value_per_column_is_bold():
    rows = [MethodRow(label=label, encoder="transformer", method="bp", seeds=[0], runs=[], test_accuracy_mean=acc,
                      test_accuracy_std=0.0, test_macro_f1_mean=acc, test_macro_f1_std=0.0, test_accuracy_ci95=None,
                      test_macro_f1_ci95=None, last_epoch_accuracy_mean=acc, best_epochs=[1], time_per_epoch_s=t,
                      train_samples_per_s=100 / t, peak_memory_mb=mem, peak_memory_kind="cpu_max_rss",
                      num_parameters=10, groups_test_accuracy=None, tuned_recipe=None)
            for label, acc, t, mem in (("A", 80.0, 2.0, 500.0), ("B", 70.0, 1.0, 900.0))]
    lines = markdown_table(rows).splitlines()
    a, b = lines[2], lines[3]
    assert "**80.00 ± 0.00**" in a and "**2.0**" not in a and "**500**" in a
    assert "**1.0**" in b and "**100**" in b and "70.00 ± 0.00" in b and "**70.00" not in b


def test_report_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no results.json"):
        build_report([tmp_path / "run"], tmp_path / "out")


# ---------------------------------------------------------------- statistics against BP, on runs made by hand

LABELS = np.arange(200) % 4  # 4 classes, 200 test examples
T_975_2DF = 4.302652729911275  # Student t quantile for 3 seeds (tables)


def fake_run(root, method: str, seed: int, wrong: range | None, predictions_file: bool = True):
    """A finished run directory whose test predictions are right except on the examples in ``wrong``."""
    from sklearn.metrics import confusion_matrix, f1_score

    predictions = LABELS.copy()
    if wrong is not None:
        predictions[list(wrong)] = (LABELS[list(wrong)] + 1) % 4
    path = root / f"{method}-seed{seed}"
    path.mkdir()
    results = {"method": method, "encoder": "transformer", "seed": seed, "best_epoch": 3,
               "validation_accuracy": 0.8, "test_accuracy": float((predictions == LABELS).mean()),
               "test_macro_f1": float(f1_score(LABELS, predictions, average="macro")),
               "last_epoch_test_accuracy": 0.8, "time_per_epoch_s": 1.0, "train_samples_per_s": 100.0,
               "peak_memory_mb": 10.0, "peak_memory_kind": "cpu_max_rss", "num_parameters": 1000,
               "confusion_matrix": confusion_matrix(LABELS, predictions).tolist()}
    (path / "results.json").write_text(json.dumps(results))
    if predictions_file:
        (path / "test_predictions.json").write_text(json.dumps(
            {"epoch": 3, "labels": LABELS.tolist(), "predictions": predictions.tolist()}))
    return path


@pytest.fixture
def bp_runs(tmp_path):
    # BP wrong on 30, 20 and 40 examples: 85, 90, 80% test accuracy
    return [fake_run(tmp_path, "bp", s, range(start, start + n)) for s, start, n in ((0, 0, 30), (1, 50, 20), (2, 100, 40))]


def test_method_right_wherever_bp_is_wrong_is_higher(bp_runs, tmp_path):
    scpl = [fake_run(tmp_path, "scpl", s, None) for s in (0, 1, 2)]  # right on every example
    report = build_report([*bp_runs, *scpl], tmp_path / "report", "paired")
    bp, row = report["rows"]
    half = T_975_2DF * 5 / math.sqrt(3)  # accuracies 85, 90, 80: sd 5
    assert bp["test_accuracy_ci95"] == pytest.approx([85 - half, 85 + half])
    assert bp["vs_bp"] is None and row["test_accuracy_ci95"] == [100.0, 100.0]
    vs = row["vs_bp"]
    assert vs["seeds"] == [0, 1, 2] and vs["test_accuracy_diff"] == pytest.approx([15.0, 10.0, 20.0])
    assert vs["test_macro_f1_diff"] == pytest.approx([100 * (1 - json.loads((p / "results.json").read_text())[
        "test_macro_f1"]) for p in bp_runs])
    assert vs["test_accuracy_diff_mean"] == pytest.approx(15.0)
    low, high = vs["bootstrap_ci95"]
    assert 5 < low < 15 < high < 25 and vs["note"] is None
    # differences 15, 10, 20: mean 15, sd 5, t = 15 / (5 / √3) = 5.196 on 2 degrees of freedom
    test = vs["test"]
    assert test["p_difference"] == pytest.approx(1 - 5.196152 / math.sqrt(29), abs=1e-6)  # 2 P(T₂ > t) = 1 - t/√(t²+2)
    assert test["p_difference_holm"] == test["p_difference"]  # one comparison: Holm changes nothing
    assert test["t_ci95"] == pytest.approx([15 - half, 15 + half]) and test["p_equivalence"] > 0.5
    assert vs["verdict"] == "higher" and report["statistics"]["comparisons"] == 1
    assert report["statistics"]["bootstrap_resamples"] == 2000 and report["statistics"]["margin"] == 1.0

    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["rows"][1]["vs_bp"] == json.loads(json.dumps(vs))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Δ acc vs BP [90% t-CI], verdict" in text.splitlines()[4]
    bp_line = next(l for l in text.splitlines() if l.startswith("| BP | 3 |"))
    assert f"[{85 - half:.2f}, {85 + half:.2f}] | reference |" in bp_line
    scpl_line = next(l for l in text.splitlines() if l.startswith("| SCPL | 3 |"))
    ci90 = test["t_ci90"]
    assert f"+15.00 [{ci90[0]:+.2f}, {ci90[1]:+.2f}] higher" in scpl_line
    paired = next(l for l in text.splitlines() if l.startswith("| SCPL | 0, 1, 2 | +15.00, +10.00, +20.00 |"))
    assert f"[{low:+.2f}, {high:+.2f}] | 0.035 (0.035) |" in paired and paired.endswith("| higher |")
    assert "at the declared margin ±1 points" in text and "α = 0.05" in text
    assert "Holm's correction across the 1 tested comparison of this report" in text
    assert "**About these settings, not the methods:** the runs of BP, SCPL" in text and "`nlp-decouple tune`" in text


def test_identical_predictions_are_equivalent(bp_runs, tmp_path):
    same = [fake_run(tmp_path, "al", s, range(start, start + n)) for s, start, n in ((0, 0, 30), (1, 50, 20), (2, 100, 40))]
    vs = build_report([*bp_runs, *same], tmp_path / "report", resamples=200)["rows"][1]["vs_bp"]
    assert vs["test_accuracy_diff"] == [0.0, 0.0, 0.0] and vs["bootstrap_ci95"] == [0.0, 0.0]
    assert vs["verdict"] == "equivalent within ±1"  # no spread at all: the tests' limits
    assert "+0.00 [+0.00, +0.00] equivalent within ±1" in (tmp_path / "report" / "report.md").read_text()


def test_holm_runs_across_the_comparisons_of_the_report(bp_runs, tmp_path):
    # three methods against the same BP; their p-values are adjusted together
    runs = [*bp_runs]
    for method, shift in (("scpl", 0), ("al", 3), ("early_exit", 6)):
        runs += [fake_run(tmp_path, method, s, range(start + shift, start + shift + n))
                 for s, start, n in ((0, 0, 28), (1, 50, 21), (2, 100, 37))]
    report = build_report(runs, tmp_path / "report", margin=2.5)
    compared = [r["vs_bp"] for r in report["rows"] if r["vs_bp"]]
    raw = [paired_test(vs["test_accuracy_diff"], 2.5) for vs in compared]
    assert [vs["test"]["p_difference_holm"] for vs in compared] == pytest.approx(holm([t.p_difference for t in raw]))
    assert [vs["test"]["p_equivalence_holm"] for vs in compared] == pytest.approx(holm([t.p_equivalence for t in raw]))
    assert [vs["verdict"] for vs in compared] == [verdict(t) for t in holm_adjust(raw)]
    assert report["statistics"]["comparisons"] == 3 and report["statistics"]["margin"] == 2.5
    text = (tmp_path / "report" / "report.md").read_text()
    assert "across the 3 tested comparisons" in text and "p TOST ±2.5 (Holm)" in text


def test_one_paired_seed_is_inconclusive(bp_runs, tmp_path):
    scpl = [fake_run(tmp_path, "scpl", 0, None), fake_run(tmp_path, "scpl", 7, None)]  # only seed 0 is paired
    vs = build_report([*bp_runs, *scpl], tmp_path / "report")["rows"][1]["vs_bp"]
    assert vs["seeds"] == [0] and vs["test"] is None and vs["verdict"] == "inconclusive (needs ≥ 2 seeds)"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "+15.00 inconclusive (needs ≥ 2 seeds)" in text and "across the 0 tested comparisons" in text


def test_runs_without_test_predictions_still_report(bp_runs, tmp_path):
    (bp_runs[1] / "test_predictions.json").unlink()  # a run from before the file was written
    scpl = [fake_run(tmp_path, "scpl", s, range(s * 10)) for s in (0, 1)]  # seed 2 only in BP
    report = build_report([*bp_runs, *scpl], tmp_path / "report")
    vs = report["rows"][1]["vs_bp"]
    assert vs["seeds"] == [0, 1] and vs["test_accuracy_diff"] == pytest.approx([15.0, 5.0])
    assert vs["bootstrap_ci95"] is None and "bp-seed1 has no test_predictions.json" in vs["note"]
    assert vs["test"]["t_ci95"] == pytest.approx(t_interval([15.0, 5.0])) and vs["verdict"] == "inconclusive"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Bootstrap interval unavailable — SCPL: bp-seed1" in text


def test_predictions_from_another_epoch_are_not_paired(bp_runs, tmp_path):
    scpl = [fake_run(tmp_path, "scpl", s, None) for s in (0, 1, 2)]
    stale = json.loads((scpl[2] / "test_predictions.json").read_text())
    (scpl[2] / "test_predictions.json").write_text(json.dumps({**stale, "epoch": 2}))
    vs = build_report([*bp_runs, *scpl], tmp_path / "report")["rows"][1]["vs_bp"]
    assert vs["bootstrap_ci95"] is None and "not from the best epoch" in vs["note"]


def test_without_bp_there_is_no_comparison_column(tmp_path):
    runs = [fake_run(tmp_path, "scpl", s, range(10)) for s in (0, 1)]
    report = build_report(runs, tmp_path / "report")
    assert report["rows"][0]["vs_bp"] is None and report["statistics"]["comparisons"] == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Δ acc vs BP" not in text and "Against BP" not in text and "95% CI (seeds)" in text


def _source(path, method: str, params: dict) -> None:
    """A source_recipe.json as compare writes it for a recipe that tune wrote for ``method``."""
    provenance = {"study": method, "params": params, "tuning_seeds": [100]}
    (path / "source_recipe.json").write_text(json.dumps(
        {"recipe": f"/tune/{method}.yaml", "overrides": [], "tune_provenance": provenance}))


def test_tuned_recipes_drop_the_settings_caveat(bp_runs, tmp_path):
    scpl = [fake_run(tmp_path, "scpl", s, None) for s in (0, 1, 2)]
    for run in [*bp_runs, *scpl]:
        method = run.name.split("-")[0]
        (run / "config.yaml").write_text(f"train:\n  lr: 0.003\nmethod:\n  name: {method}\n")
        _source(run, method, {"train.lr": 0.003})
    report = build_report([*bp_runs, *scpl], tmp_path / "report")
    assert [r["tuned_recipe"] for r in report["rows"]] == ["/tune/bp.yaml", "/tune/scpl.yaml"]
    assert report["rows"][1]["vs_bp"]["tuned"] is True
    assert "not the methods" not in (tmp_path / "report" / "report.md").read_text()

    (scpl[1] / "config.yaml").write_text("train:\n  lr: 0.01\nmethod:\n  name: scpl\n")  # a tuned value overridden
    _source(bp_runs[2], "scpl", {"train.lr": 0.003})  # and BP run from SCPL's tuned recipe
    report = build_report([*bp_runs, *scpl], tmp_path / "report")
    assert [r["tuned_recipe"] for r in report["rows"]] == [None, None]
    assert report["rows"][1]["vs_bp"]["tuned"] is False
    assert "the runs of BP, SCPL do not come from a recipe written by `nlp-decouple tune`" in \
        (tmp_path / "report" / "report.md").read_text()


def test_report_command_passes_the_bootstrap_settings_and_margin(bp_runs, tmp_path, capsys):
    from nlp_decouple.cli.report import main

    scpl = [fake_run(tmp_path, "scpl", s, None) for s in (0, 1, 2)]
    out = tmp_path / "report"
    assert main([*map(str, bp_runs + scpl), "--out", str(out), "--resamples", "50", "--bootstrap-seed", "4",
                 "--margin", "0.5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["statistics"]["bootstrap_resamples"], report["statistics"]["bootstrap_seed"]) == (50, 4)
    assert report["statistics"]["margin"] == 0.5 and report["rows"][1]["vs_bp"]["test"]["margin"] == 0.5
    assert "(50 resamples, RNG seed 4)" in capsys.readouterr().out


def test_report_refuses_a_margin_that_is_not_positive(bp_runs, tmp_path):
    with pytest.raises(UserError, match="margin=0"):
        build_report(bp_runs, tmp_path / "report", margin=0)
