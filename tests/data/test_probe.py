"""The probe set (eval.probe_samples): a seeded, stratified draw that does not depend on the file's order."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets

from nlp_decouple.config import load_config
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
