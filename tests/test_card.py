"""Model cards: a finished run's best/ and last/ hold a README.md whose Hub metadata loads back with the
scores of the epoch each folder's weights come from."""
from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from nlp_decouple.card import source_commit

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = ["data.synthetic_train_size=300", "data.synthetic_test_size=100", "tokenizer.vocab_size=200",
       "model.hidden_size=16", "model.num_layers=2", "method.name=early_exit", "train.epochs=3", "train.lr=5e-2",
       "eval.every_group=false", "train.progress=false", "run_name=card"]


def scores(card: ModelCard) -> dict[tuple[str, str], float]:
    found = {}
    for result in card.data.eval_results:
        assert result.task_type == "text-classification" and result.dataset_name == "synthetic"
        found[result.dataset_split, result.metric_type] = result.metric_value
        if result.metric_type == "f1":
            assert result.metric_args == {"average": "macro"}
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from nlp_decouple.config import load_config
    from nlp_decouple.trainer import Trainer

    out = tmp_path_factory.mktemp("card")
    Trainer(load_config("recipes/quickstart.yaml", [*RUN, f"output_dir={out}"])).fit()
    return out / "card"


@pytest.mark.parametrize("tag", ["best", "last"])
def test_card_loads_back_with_the_scores_of_its_epoch(run, tag):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    row = rows[results["best_epoch"] - 1] if tag == "best" else rows[-1]
    card = ModelCard.load(run / tag / "README.md")
    meta = card.data
    assert meta.library_name == "nlp_decouple" and meta.pipeline_tag == "text-classification"
    assert meta.model_name == "card" and meta.metrics == ["accuracy", "f1"]
    assert meta.datasets is None  # the synthetic set has no Hub id
    extra = meta.nlp_decouple
    assert extra["method"] == "early_exit" and extra["encoder"] == "lstm" and extra["group_sizes"] == [1, 1, 1]
    assert extra["epoch"] == row["epoch"] and extra["weights"] == tag and extra["commit"] == source_commit()
    expected = {(split, metric): round(row[split][key], 4) for split in ("test", "validation")
                for metric, key in (("accuracy", "accuracy"), ("f1", "macro_f1"))}
    assert scores(card) == expected
    if tag == "best":
        assert scores(card)["test", "accuracy"] == round(results["test_accuracy"], 4)
    assert "import nlp_decouple.hf" in card.text and 'pipeline("text-classification"' in card.text
    assert f"epoch {row['epoch']}" in card.text


def test_best_card_names_the_best_epoch_and_last_the_last(run):
    results = json.loads((run / "results.json").read_text())
    best, last = (ModelCard.load(run / tag / "README.md").data.nlp_decouple["epoch"] for tag in ("best", "last"))
    assert best == results["best_epoch"] and last == results["epochs_run"]


def test_a_hub_dataset_and_base_model_are_named(tmp_path):
    from nlp_decouple.card import build_card
    from nlp_decouple.config import load_config
    from nlp_decouple.data import TextData

    cfg = load_config(None, ["data.name=ag_news", "method.name=scpl", "model.encoder=pretrained",
                             "model.pretrained=sentence-transformers/all-MiniLM-L6-v2", "model.num_layers=6",
                             "run_name=minilm"])
    data = TextData(None, ["World", "Sports", "Business", "Sci/Tech"], 128, {"train": 9, "validation": 3, "test": 4})
    row = {"epoch": 2, "validation": {"accuracy": 0.91234, "macro_f1": 0.9}, "test": None}
    card = build_card(tmp_path / "best", cfg, data, row, "best")
    card.save(str(tmp_path / "README.md"))
    meta = ModelCard.load(tmp_path / "README.md").data
    assert meta.datasets == ["fancyzhx/ag_news"] and meta.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in meta.eval_results} == {
        ("validation", "accuracy"): 0.9123, ("validation", "f1"): 0.9}  # no test scores: none claimed
    assert all(r.dataset_type == "fancyzhx/ag_news" for r in meta.eval_results)
