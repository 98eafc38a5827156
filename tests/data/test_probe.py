"""The probe set (eval.probe_samples): a seeded, stratified draw that does not depend on the file's order."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets

from nlp_decouple.config import load_config
from nlp_decouple.data import draw_probe_set, tokenize_splits
from nlp_decouple.data.synthetic import make_synthetic
from nlp_decouple.metrics import refresh_standardizers
from nlp_decouple.models import Standardizer

pytestmark = pytest.mark.usefixtures("one_thread")

PROBE = 100  # of 700 training texts, 4 classes of about 175


def write_hub_folder(root: Path, splits: dict[str, Dataset]) -> Path:
    """A dataset folder in Hub layout: data/<split>-00000-of-00001.parquet, ClassLabel kept in the schema."""
    (root / "data").mkdir(parents=True)
    for name, split in splits.items():
        split.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def sorted_and_shuffled(tmp_path_factory) -> tuple[Path, Path]:
    """The same train / validation / test texts twice: train grouped by label (as many exports are), and
    train shuffled."""
    synthetic = make_synthetic(800, 120, seed=0)
    train, validation = synthetic["train"].select(range(700)), synthetic["train"].select(range(700, 800))
    by_label = concatenate_datasets([train.filter(lambda y: y == c, input_columns="label") for c in range(4)])
    assert by_label["label"][:PROBE] == [0] * PROBE  # the first texts of the file hold one class
    folders = []
    for name, ordered in (("sorted", by_label), ("shuffled", train.shuffle(seed=1))):
        folders.append(write_hub_folder(tmp_path_factory.mktemp(name),
                                        {"train": ordered, "validation": validation, "test": synthetic["test"]}))
    return folders[0], folders[1]


def scpl_trainer(folder: Path, out: Path):
    from nlp_decouple.trainer import Trainer

    return Trainer(load_config(None, [
        "data.name=custom", f"data.path={folder}", "tokenizer.train=word", "tokenizer.vocab_size=200",
        "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2", "method.name=scpl",
        f"eval.probe_samples={PROBE}", "train.batch_size=32", "train.progress=false", "train.cpu=true",
        f"output_dir={out}", f"run_name={folder.name}"]))


def probe_labels(trainer) -> list[int]:
    return [y for batch in trainer.loaders.probe for y in batch["labels"].tolist()]


def test_probe_set_covers_every_class_of_a_label_sorted_file(sorted_and_shuffled, tmp_path):
    trainer = scpl_trainer(sorted_and_shuffled[0], tmp_path)
    labels = probe_labels(trainer)
    train_counts = Counter(trainer.data.splits["train"]["label"])
    assert len(labels) == PROBE
    # stratified: each class's share of the probe set is its share of the training split, to one text
    for c, count in Counter(labels).items():
        assert abs(count - PROBE * train_counts[c] / len(trainer.data.splits["train"])) < 1, (c, count)
    assert set(labels) == set(range(4))


def test_refreshed_statistics_do_not_depend_on_the_file_order(sorted_and_shuffled, tmp_path):
    """The same model refreshed from a label-sorted file and from a shuffled copy of it: the same
    statistics, because the seed draws the same texts from either."""
    on_sorted, on_shuffled = (scpl_trainer(folder, tmp_path) for folder in sorted_and_shuffled)
    assert on_sorted.tokenizer.get_vocab() == on_shuffled.tokenizer.get_vocab()  # same ids for the same texts
    on_shuffled.model.load_state_dict(on_sorted.model.state_dict())
    stats = []
    for trainer in (on_sorted, on_shuffled):
        refresh_standardizers(trainer.model, trainer.loaders.probe, trainer.accelerator)
        norm = next(m for m in trainer.model.modules() if isinstance(m, Standardizer))
        stats.append((norm.running_mean.clone(), norm.running_var.clone()))
    torch.testing.assert_close(stats[0][0], stats[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[0][1], stats[1][1], rtol=1e-5, atol=1e-6)
    assert sorted(probe_labels(on_sorted)) == sorted(probe_labels(on_shuffled))
    assert not np.allclose(stats[0][0].numpy(), 0)  # the refresh set real statistics



def test_a_tuning_run_never_reads_test_and_records_its_probe_set(sorted_and_shuffled, tmp_path, monkeypatch):
    """eval.test=false: an unreadable test file is no obstacle, only train and validation are tokenised,
    and results.json says what the probe set held."""
    import nlp_decouple.trainer as trainer_module

    folder = Path(shutil.copytree(sorted_and_shuffled[0], tmp_path / "unreadable_test"))
    (folder / "data" / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
    tokenized = []

    def recording(splits, *args):
        tokenized.append(sorted(splits))
        return tokenize_splits(splits, *args)

    monkeypatch.setattr(trainer_module, "tokenize_splits", recording)
    cfg = load_config(None, ["data.name=custom", f"data.path={folder}", "tokenizer.train=word", "model.encoder=lstm",
                             "model.hidden_size=16", "model.num_layers=2", "method.name=scpl", "eval.test=false",
                             f"eval.probe_samples={PROBE}", "train.epochs=1", "train.batch_size=32",
                             "train.progress=false", "train.cpu=true", f"output_dir={tmp_path}", "run_name=tune"])
    trainer = trainer_module.Trainer(cfg)
    results = trainer.fit()
    assert tokenized == [["train", "validation"]] and set(trainer.loaders.evals) == {"validation"}
    assert results["test_accuracy"] is None and "test" not in results["data"]
    counts = Counter(probe_labels(trainer))
    assert json.loads((tmp_path / "tune" / "results.json").read_text())["probe_set"] == {
        "size": PROBE, "draw": "stratified", "classes_present": 4, "classes_total": 4,
        "min_per_class": min(counts.values()), "per_class": [counts[c] for c in range(4)]}


# ---------------------------------------------------------------- the draw itself


def class_labels(counts: list[int]) -> list[int]:
    """``counts[c]`` labels of class c, grouped by class."""
    return [c for c, n in enumerate(counts) for _ in range(n)]


def test_stratified_draw_keeps_each_class_share():
    counts = [500, 300, 150, 40, 10]
    labels = class_labels(counts)
    probe = draw_probe_set(labels, 5, 200, seed=0)
    assert probe.draw == "stratified" and len(probe.indices) == len(set(probe.indices)) == 200
    got = Counter(labels[i] for i in probe.indices)  # counted here, not taken from the ProbeSet
    assert [got[c] for c in range(5)] == probe.per_class
    for c, n in enumerate(counts):
        assert abs(got[c] - 200 * n / sum(counts)) < 1, (c, got[c])
    assert probe.stats() == {"size": 200, "draw": "stratified", "classes_present": 5, "classes_total": 5,
                             "min_per_class": 2, "per_class": probe.per_class}


def test_draw_depends_on_the_seed_only():
    labels = class_labels([120, 80, 50])
    assert draw_probe_set(labels, 3, 60, seed=7).indices == draw_probe_set(labels, 3, 60, seed=7).indices
    assert set(draw_probe_set(labels, 3, 60, seed=8).indices) != set(draw_probe_set(labels, 3, 60, seed=7).indices)


def test_a_split_no_larger_than_asked_is_taken_whole():
    probe = draw_probe_set(class_labels([3, 2]), 3, 5, seed=0)  # a third class absent from train
    assert probe.draw == "all" and sorted(probe.indices) == list(range(5))
    assert probe.stats()["classes_present"] == 2 and probe.stats()["classes_total"] == 3
    assert probe.stats()["min_per_class"] == 0 and probe.per_class == [3, 2, 0]


@pytest.mark.parametrize("counts,size", [([50, 50, 1], 20),  # a class with one text cannot be split
                                          ([50, 50, 50], 2)])  # fewer texts asked than classes
def test_random_draw_when_classes_cannot_all_be_represented(counts, size):
    probe = draw_probe_set(class_labels(counts), 3, size, seed=0)
    assert probe.draw == "random" and len(set(probe.indices)) == size
    assert sum(probe.per_class) == size
    assert draw_probe_set(class_labels(counts), 3, size, seed=0).indices == probe.indices
