"""report: the table, report.json and plots agree with the runs' own results.json."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from conftest import SWEEP_METHODS, SWEEP_SEEDS
from nlp_decouple.errors import UserError
from nlp_decouple.report import Run, build_report, markdown_table, shared_settings

NAMES = {"bp": "BP", "early_exit": "Early Exit", "al": "AL"}


def test_report_numbers_match_every_runs_results(tiny_sweep, tmp_path):
    runs = sorted(p for p in tiny_sweep.iterdir() if (p / "results.json").is_file())
    report = build_report(runs, tmp_path / "report", "tiny")
    assert [r["method"] for r in report["rows"]] == SWEEP_METHODS  # in the canonical method order
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
    rows = [{"label": label, "seeds": [0], "test_accuracy_mean": acc, "test_accuracy_std": 0.0,
             "test_macro_f1_mean": acc, "test_macro_f1_std": 0.0, "last_epoch_accuracy_mean": acc,
             "time_per_epoch_s": t, "train_samples_per_s": 100 / t, "peak_memory_mb": mem, "num_parameters": 10}
            for label, acc, t, mem in (("A", 80.0, 2.0, 500.0), ("B", 70.0, 1.0, 900.0))]
    lines = markdown_table(rows).splitlines()
    a, b = lines[2], lines[3]
    assert "**80.00 ± 0.00**" in a and "**2.0**" not in a and "**500**" in a
    assert "**1.0**" in b and "**100**" in b and "70.00 ± 0.00" in b and "**70.00" not in b


def test_report_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no results.json"):
        build_report([tmp_path / "run"], tmp_path / "out")
