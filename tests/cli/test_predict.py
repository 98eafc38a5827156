"""predict: the CLI on a saved model, checked against the model's own forward."""
from __future__ import annotations

import json

import pytest
import torch

from nlp_decouple.errors import UserError
from nlp_decouple.cli.predict import main

TEXTS = ["the team won the match", "the new phone has a fast chip", "a terrible game, the players lost"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))  # cli_entry turns a UserError into one line on stderr and code 2
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predictions_equal_the_reloaded_models_forward(tiny_sweep, capsys):
    from nlp_decouple.inference import encoded_batches, load_for_inference

    code, out, _ = run(capsys, str(tiny_sweep / "al-seed0"), *TEXTS, "--json", "--device", "cpu")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    model, tok = load_for_inference(tiny_sweep / "al-seed0" / "best", "cpu")
    batch = next(encoded_batches(tok, TEXTS, model.config.max_seq_length, 64, model.device))
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    names = model.config.id2label
    for row, p, text in zip(rows, probs, TEXTS):
        assert row["text"] == text and row["label"] == names[int(p.argmax())]
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-6)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["group"] == 2 and row["exited_early"] is False


def test_file_input_table_output_and_adaptive_exit(tiny_sweep, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    code, out, err = run(capsys, str(tiny_sweep / "early_exit-seed0"), "--file", str(texts), "--exit-threshold",
                         "0.3", "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3 and all("[group " in line for line in lines)
    assert "texts answered before the last group" in err


@pytest.mark.parametrize("content, message", [("", "no texts"), ("\n\n", "no texts"), ("ok\n\nok\n", "text 2 is empty")])
def test_empty_input_is_rejected_clearly(tiny_sweep, tmp_path, capsys, content, message):
    texts = tmp_path / "texts.txt"
    texts.write_text(content)
    code, out, err = run(capsys, str(tiny_sweep / "bp-seed0"), "--file", str(texts))
    assert code == 2 and message in err and "Traceback" not in err and out == ""


def test_bad_requests_name_the_fix(tiny_sweep, tmp_path, capsys):
    cases = [
        ((str(tiny_sweep / "bp-seed0"), "hello", "--exit-threshold", "0.9"), "no early exits"),
        ((str(tiny_sweep / "early_exit-seed0"), "hello", "--exit-threshold", "1.5"), "(0, 1]"),
        ((str(tmp_path / "nowhere"), "hello"), "not found"),
        ((str(tmp_path), "hello"), "not a saved model"),
        ((str(tiny_sweep / "bp-seed0"), "--file", str(tmp_path / "missing.txt")), "not found"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err, (argv, err)


def test_check_texts_rejects_non_strings():
    from nlp_decouple.inference import check_texts

    with pytest.raises(UserError, match="text 1 is empty"):
        check_texts([None], "test")  # type: ignore[list-item]
