"""evaluate: saved runs scored again, on their split or on a CSV of texts."""
from __future__ import annotations

import csv
import json

import pytest

from nlp_decouple.cli.evaluate import main


def test_reevaluating_a_run_reproduces_its_reported_test_accuracy(tiny_sweep, capsys):
    runs = [tiny_sweep / "bp-seed0", tiny_sweep / "al-seed1"]
    assert main([*map(str, runs), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        evaluation = json.loads((run / "evaluation" / "synthetic-test.json").read_text())
        assert evaluation["examples"] == results["data"]["test"]
        assert evaluation["accuracy"] == pytest.approx(results["test_accuracy"], abs=0.011)  # batching: a flip or two
        assert evaluation["confusion_matrix"] and len(evaluation["groups"]) >= 1
        assert str(run) in table
    al = json.loads((tiny_sweep / "al-seed1" / "evaluation" / "synthetic-test.json").read_text())
    assert [g["group"] for g in al["groups"]] == [0, 1, 2]  # AL's shortcut exits, one per layer



def test_validation_is_the_runs_own_without_reading_test(tiny_sweep):
    """--split validation loads no test split, and the validation split is the one the run chose on."""
    run = tiny_sweep / "bp-seed0"
    assert main([str(run), "--split", "validation", "--device", "cpu"]) == 0
    results = json.loads((run / "results.json").read_text())
    evaluation = json.loads((run / "evaluation" / "synthetic-validation.json").read_text())
    assert evaluation["examples"] == results["data"]["validation"]
    assert evaluation["accuracy"] == pytest.approx(results["validation_accuracy"], abs=0.011)

def test_a_csv_of_texts_with_labels_is_scored_and_predictions_written(tiny_sweep, tmp_path):
    names = json.loads((tiny_sweep / "bp-seed0" / "best" / "config.json").read_text())["id2label"]
    texts = tmp_path / "mine.csv"
    with texts.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([["the team won the match", names["0"]], ["the chip is fast", 2], ["great phone", names["3"]]])
    out = tmp_path / "preds.csv"
    assert main([str(tiny_sweep / "bp-seed0"), "--texts", str(texts), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and set(rows[0]) == {"text", "prediction", "probability", "label"}
    assert rows[1]["label"] == names["2"]
    result = json.loads((tiny_sweep / "bp-seed0" / "evaluation" / "mine-texts.json").read_text())
    agree = sum(r["prediction"] == r["label"] for r in rows) / 3
    assert result["examples"] == 3 and result["accuracy"] == pytest.approx(agree)


@pytest.mark.parametrize("content, message", [("text,label\nhello,nonsense\n", "neither one of"),
                                              ("words\nhello\n", "no 'text' column"),
                                              ("text\nhello\n\"\"\n", "is empty")])
def test_bad_text_files_are_rejected(tiny_sweep, tmp_path, capsys, content, message):
    texts = tmp_path / "bad.csv"
    texts.write_text(content)
    assert main([str(tiny_sweep / "bp-seed0"), "--texts", str(texts)]) == 2  # one clear line, exit code 2
    assert message in capsys.readouterr().err


def test_only_data_overrides_are_accepted(tiny_sweep, capsys):
    assert main([str(tiny_sweep / "bp-seed0"), "train.lr=3"]) == 2
    assert "only data.*" in capsys.readouterr().err


def test_written_probabilities_are_the_softmax_of_the_logits(tmp_path):
    """The probability column is the top class's softmax probability (torch as the reference), stable
    for large logits."""
    import numpy as np
    import torch

    from nlp_decouple.cli.evaluate import write_predictions

    logits = np.array([[0.0, np.log(3.0), -1.0], [1000.0, 0.0, -1000.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    logits = np.concatenate([logits, np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32) * 4])
    out = tmp_path / "preds.csv"
    write_predictions(out, [f"text {i}" for i in range(len(logits))], logits, ["a", "b", "c"], None)
    rows = list(csv.DictReader(out.open()))
    want = torch.softmax(torch.from_numpy(logits).double(), dim=-1)
    for row, probs in zip(rows, want):
        assert row["prediction"] == "abc"[int(probs.argmax())]
        assert row["probability"] == f"{float(probs.max()):.4f}"
    assert [r["probability"] for r in rows[:3]] == [f"{3 / (4 + np.exp(-1)):.4f}", "1.0000", "0.3333"]
