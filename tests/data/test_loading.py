"""load_text_data: Hub-layout folders, save_to_disk folders, CSV/JSON/parquet files, caps, noise, errors."""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from nlp_decouple.config import DataConfig
from nlp_decouple.data import DATASETS, known_names, load_text_data
from nlp_decouple.errors import UserError

from conftest import AG_NEWS, IMDB, RAW, need

AG_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
AG_CSV = RAW / "ag_news_test.csv"
IMDB_CSV = RAW / "imdb_kaggle_999.csv"


def proportions(labels, num_classes: int) -> list[float]:
    counts = Counter(labels)
    return [counts[c] / len(labels) for c in range(num_classes)]


def assert_clean_splits(data, num_classes: int) -> None:
    assert set(data.splits) == {"train", "validation", "test"}
    for name, split in data.splits.items():
        assert split.column_names == ["text", "label"], name
        assert isinstance(split.features["label"], ClassLabel)
        assert split.features["label"].names == data.label_names
        assert all(isinstance(t, str) and t for t in split["text"]), name
        assert set(split["label"]) <= set(range(num_classes)), name
    assert data.num_classes == num_classes
    assert data.stats["train"] == len(data.splits["train"])
    assert data.stats["validation"] == len(data.splits["validation"])
    assert data.stats["test"] == len(data.splits["test"])


def write_records(path, rows: list[dict]) -> None:
    """JSON lines, written by hand (no dependency on the loader's own writer)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- Hub-layout folders


@need(AG_NEWS)
def test_ag_news_hub_layout_folder():
    data = load_text_data(DataConfig(name="ag_news", path=str(AG_NEWS)), seed=0)
    assert_clean_splits(data, 4)
    assert data.label_names == AG_NAMES
    train, val, test = (data.splits[s] for s in ("train", "validation", "test"))
    assert len(train) + len(val) == 6080
    assert len(test) == 1520
    assert len(val) == pytest.approx(608, abs=1)  # data.val_fraction = 0.1
    assert data.max_length == DATASETS["ag_news"].max_length
    assert data.stats["dropped_empty"] == {"train": 0, "test": 0}
    assert "test_carved_from_train" not in data.stats
    # validation is carved from train, stratified, and never overlaps it
    train_p, val_p = proportions(train["label"], 4), proportions(val["label"], 4)
    assert all(abs(a - b) <= 0.01 for a, b in zip(train_p, val_p)), (train_p, val_p)
    assert not set(train["text"]) & set(val["text"])
    # a known row of the official AG News test split keeps its class
    joined = {t: y for s in (train, val, test) for t, y in zip(s["text"], s["label"])}
    fears = [t for t in joined if t.startswith("Fears for T N pension after talks")]
    assert len(fears) == 1 and AG_NAMES[joined[fears[0]]] == "Business"


@need(AG_NEWS)
def test_validation_split_depends_on_seed():
    a = load_text_data(DataConfig(name="ag_news", path=str(AG_NEWS)), seed=0)
    b = load_text_data(DataConfig(name="ag_news", path=str(AG_NEWS)), seed=0)
    c = load_text_data(DataConfig(name="ag_news", path=str(AG_NEWS)), seed=1)
    assert a.splits["validation"]["text"] == b.splits["validation"]["text"]
    assert a.splits["validation"]["text"] != c.splits["validation"]["text"]
    assert a.splits["test"]["text"] == c.splits["test"]["text"]  # the source's test split is kept as is


@need(IMDB)
def test_imdb_hub_layout_folder():
    data = load_text_data(DataConfig(name="imdb", path=str(IMDB)), seed=0)
    assert_clean_splits(data, 2)
    assert data.label_names == ["neg", "pos"]
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 799
    assert len(data.splits["test"]) == 200


# ---------------------------------------------------------------- save_to_disk folders


def small_dataset(n: int, names=("alpha", "beta", "gamma"), offset: int = 0) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(names))})
    texts = [f"document number {offset + i} about {names[i % len(names)]}" for i in range(n)]
    return Dataset.from_dict({"text": texts, "label": [i % len(names) for i in range(n)]}, features=features)


def test_save_to_disk_dataset_dict(tmp_path):
    folder = tmp_path / "saved"
    DatasetDict(train=small_dataset(90), test=small_dataset(30, offset=1000)).save_to_disk(str(folder))
    data = load_text_data(DataConfig(name="custom", path=str(folder)), seed=0)
    assert_clean_splits(data, 3)
    assert data.label_names == ["alpha", "beta", "gamma"]
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 90
    assert len(data.splits["validation"]) == 9
    assert sorted(data.splits["test"]["text"]) == sorted(small_dataset(30, offset=1000)["text"])
    for split in data.splits.values():  # labels survive the round trip
        for text, label in zip(split["text"], split["label"]):
            assert text.endswith(data.label_names[label])


def test_source_validation_split_is_used_not_carved(tmp_path):
    folder = tmp_path / "three"
    DatasetDict(train=small_dataset(90), validation=small_dataset(12, offset=500),
                test=small_dataset(30, offset=1000)).save_to_disk(str(folder))
    data = load_text_data(DataConfig(name="custom", path=str(folder)), seed=0)
    assert_clean_splits(data, 3)
    assert data.stats.get("validation_from_source") is True
    assert len(data.splits["train"]) == 90  # nothing carved from train
    assert sorted(data.splits["validation"]["text"]) == sorted(small_dataset(12, offset=500)["text"])
    other_seed = load_text_data(DataConfig(name="custom", path=str(folder)), seed=3)
    assert sorted(other_seed.splits["validation"]["text"]) == sorted(data.splits["validation"]["text"])
    capped = load_text_data(DataConfig(name="custom", path=str(folder), max_eval_samples=6), seed=0)
    assert len(capped.splits["validation"]) == 6
    assert set(capped.splits["validation"]["text"]) <= set(data.splits["validation"]["text"])


def test_validation_split_that_serves_as_test_is_not_reused(tmp_path):
    # sst2 keeps its labelled validation split as test: validation is then carved from train
    folder = tmp_path / "two"
    DatasetDict(train=small_dataset(90), validation=small_dataset(30, offset=1000)).save_to_disk(str(folder))
    data = load_text_data(DataConfig(name="sst2", path=str(folder), text_fields=["text"], label_field="label"), seed=0)
    assert "validation_from_source" not in data.stats
    assert sorted(data.splits["test"]["text"]) == sorted(small_dataset(30, offset=1000)["text"])
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 90


def test_save_to_disk_single_dataset_carves_test(tmp_path):
    folder = tmp_path / "single"
    small_dataset(100).save_to_disk(str(folder))
    data = load_text_data(DataConfig(name="custom", path=str(folder), test_fraction=0.2), seed=0)
    assert_clean_splits(data, 3)
    assert data.stats.get("test_carved_from_train") is True
    assert len(data.splits["test"]) == 20
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 80
    texts = [set(s["text"]) for s in data.splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


# ---------------------------------------------------------------- CSV files


@need(AG_CSV)
def test_ag_news_raw_csv_with_offset():
    cfg = DataConfig(name="ag_news", path=str(AG_CSV), text_fields=["title", "description"], label_offset=-1)
    data = load_text_data(cfg, seed=0)
    assert_clean_splits(data, 4)
    assert data.label_names == AG_NAMES
    assert data.stats.get("test_carved_from_train") is True
    assert len(data.splits["test"]) == 1520  # data.test_fraction = 0.2 of 7,600
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 6080
    everything = {t: y for s in data.splits.values() for t, y in zip(s["text"], s["label"])}
    # first data row of the file: label 3 (1-based) = Business, title and description joined by a space
    row = next(t for t in everything if t.startswith("Fears for T N pension after talks Unions representing"))
    assert AG_NAMES[everything[row]] == "Business"
    row = next(t for t in everything if t.startswith("The Race is On: Second Private Team Sets Launch Date"))
    assert AG_NAMES[everything[row]] == "Sci/Tech"
    # the carved test split is stratified too: 380 per class
    assert Counter(data.splits["test"]["label"]) == {0: 380, 1: 380, 2: 380, 3: 380}


@need(AG_CSV)
def test_ag_news_raw_csv_without_offset_explains():
    cfg = DataConfig(name="ag_news", path=str(AG_CSV), text_fields=["title", "description"])
    with pytest.raises(UserError, match="label_offset"):
        load_text_data(cfg, seed=0)


@need(IMDB_CSV)
def test_imdb_kaggle_csv_as_custom():
    cfg = DataConfig(name="custom", path=str(IMDB_CSV), text_fields=["review"], label_field="sentiment")
    data = load_text_data(cfg, seed=0)
    assert_clean_splits(data, 2)
    assert data.label_names == ["negative", "positive"]
    assert sum(len(s) for s in data.splits.values()) == 999
    raw = pd.read_csv(IMDB_CSV)
    truth = dict(zip(raw["review"].str.strip(), raw["sentiment"]))
    for text, label in zip(data.splits["test"]["text"][:50], data.splits["test"]["label"][:50]):
        assert truth[text] == data.label_names[label]


@need(AG_CSV)
def test_csv_missing_column_names_the_columns():
    cfg = DataConfig(name="ag_news", path=str(AG_CSV), text_fields=["title", "body"], label_offset=-1)
    with pytest.raises(UserError) as info:
        load_text_data(cfg, seed=0)
    message = str(info.value)
    assert "'body'" in message
    for column in ("label", "title", "description"):
        assert column in message
    assert "data.text_fields" in message


def test_csv_with_separate_test_file_and_missing_label_column(tmp_path):
    rows = [{"sentence": f"row {i} says {'yes' if i % 2 else 'no'}", "y": i % 2} for i in range(60)]
    pd.DataFrame(rows[:40]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[40:]).to_csv(tmp_path / "test.csv", index=False)
    cfg = DataConfig(name="custom", path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv"),
                     text_fields=["sentence"], label_field="y")
    data = load_text_data(cfg, seed=0)
    assert_clean_splits(data, 2)
    assert data.label_names == ["0", "1"]
    assert sorted(data.splits["test"]["text"]) == sorted(r["sentence"] for r in rows[40:])
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 40
    with pytest.raises(UserError, match=r"'label'.*sentence"):
        load_text_data(DataConfig(name="custom", path=str(tmp_path / "train.csv"), text_fields=["sentence"]), seed=0)
    with pytest.raises(UserError, match="data.test_path"):
        load_text_data(DataConfig(name="custom", path=str(tmp_path / "train.csv"),
                                  test_path=str(tmp_path / "nope.csv")), seed=0)


# ---------------------------------------------------------------- JSON and parquet files


def test_json_lines_with_string_labels_imbalanced_and_stratified(tmp_path):
    counts = {"cat": 600, "dog": 250, "emu": 150}
    rows = [{"text": f"{name} sample {i}", "label": name} for name, n in counts.items() for i in range(n)]
    path = tmp_path / "pets.jsonl"
    write_records(path, rows)
    data = load_text_data(DataConfig(name="custom", path=str(path)), seed=3)
    assert_clean_splits(data, 3)
    assert data.label_names == ["cat", "dog", "emu"]
    for split in data.splits.values():
        for text, label in zip(split["text"], split["label"]):
            assert text.startswith(data.label_names[label])
    expected = [0.6, 0.25, 0.15]
    for name in ("train", "validation", "test"):
        got = proportions(data.splits[name]["label"], 3)
        assert all(abs(a - b) <= 0.01 for a, b in zip(got, expected)), (name, got)


def test_json_with_registry_label_names(tmp_path):
    rows = [{"text": f"story {i}", "label": AG_NAMES[i % 4]} for i in range(80)]
    path = tmp_path / "news.json"
    path.write_text(json.dumps(rows))
    data = load_text_data(DataConfig(name="ag_news", path=str(path)), seed=0)
    assert data.label_names == AG_NAMES
    for split in data.splits.values():
        for text, label in zip(split["text"], split["label"]):
            assert AG_NAMES.index(AG_NAMES[int(text.split()[1]) % 4]) == label
    write_records(path := tmp_path / "bad.jsonl", rows + [{"text": "odd one", "label": "Weather"}])
    with pytest.raises(UserError, match="'Weather'"):
        load_text_data(DataConfig(name="ag_news", path=str(path)), seed=0)


def test_parquet_file(tmp_path):
    frame = pd.DataFrame({"title": [f"headline {i}" for i in range(50)],
                          "body": [f"body text {i}" for i in range(50)],
                          "target": [i % 2 for i in range(50)]})
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    data = load_text_data(DataConfig(name="custom", path=str(path), text_fields=["title", "body"],
                                     label_field="target"), seed=0)
    assert_clean_splits(data, 2)
    assert data.label_names == ["0", "1"]
    all_texts = sorted(t for s in data.splits.values() for t in s["text"])
    assert all_texts == sorted(f"headline {i} body text {i}" for i in range(50))
    for split in data.splits.values():
        for text, label in zip(split["text"], split["label"]):
            assert int(text.split()[1]) % 2 == label


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'.*\.csv"):
        load_text_data(DataConfig(name="custom", path=str(path)), seed=0)


# ---------------------------------------------------------------- empty texts


def test_empty_texts_are_dropped_and_counted(tmp_path):
    train = [{"text": f"sentence {i}", "label": i % 2} for i in range(40)]
    train += [{"text": "", "label": 0}, {"text": "   ", "label": 1}, {"text": None, "label": 0}]
    test = [{"text": f"held out {i}", "label": i % 2} for i in range(10)] + [{"text": "", "label": 1}]
    write_records(tmp_path / "train.jsonl", train)
    write_records(tmp_path / "test.jsonl", test)
    data = load_text_data(DataConfig(name="custom", path=str(tmp_path / "train.jsonl"),
                                     test_path=str(tmp_path / "test.jsonl")), seed=0)
    assert data.stats["dropped_empty"] == {"train": 3, "test": 1}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 40
    assert len(data.splits["test"]) == 10
    assert all(t.strip() for s in data.splits.values() for t in s["text"])


def test_all_empty_texts_is_an_error(tmp_path):
    write_records(tmp_path / "empty.jsonl", [{"text": "", "label": i % 2} for i in range(20)])
    with pytest.raises(UserError, match="empty"):
        load_text_data(DataConfig(name="custom", path=str(tmp_path / "empty.jsonl")), seed=0)


# ---------------------------------------------------------------- label noise


@pytest.fixture(scope="module")
def clean_synthetic():
    return load_text_data(DataConfig(name="synthetic", synthetic_train_size=4000, synthetic_test_size=500), seed=0)


def test_label_noise_rate_and_scope(clean_synthetic):
    noisy = load_text_data(DataConfig(name="synthetic", synthetic_train_size=4000, synthetic_test_size=500,
                                      label_noise=0.2), seed=0)
    clean = clean_synthetic
    # only the train labels change: same texts in the same order, validation and test untouched
    assert noisy.splits["train"]["text"] == clean.splits["train"]["text"]
    for name in ("validation", "test"):
        assert noisy.splits[name]["text"] == clean.splits[name]["text"]
        assert noisy.splits[name]["label"] == clean.splits[name]["label"]
    before, after = clean.splits["train"]["label"], noisy.splits["train"]["label"]
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    rate = len(changed) / len(before)
    # a flip to a uniformly chosen class (the same one included) would realise only 0.2 * 3/4 = 0.15
    assert rate == pytest.approx(0.2, abs=0.03)
    assert noisy.stats["label_noise_realised"] == pytest.approx(rate)
    assert noisy.splits["train"].features["label"].names == clean.label_names
    # flipped labels go to every other class, not to one
    targets = Counter((a, b) for a, b in changed)
    for original in range(4):
        assert {b for (a, b) in targets if a == original} == set(range(4)) - {original}
    assert "label_noise_realised" not in clean.stats


def test_label_noise_binary_always_flips(tmp_path):
    write_records(tmp_path / "bin.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(2000)])
    cfg = dict(name="custom", path=str(tmp_path / "bin.jsonl"))
    clean = load_text_data(DataConfig(**cfg), seed=5)
    noisy = load_text_data(DataConfig(**cfg, label_noise=0.3), seed=5)
    truth = {f"t{i}": i % 2 for i in range(2000)}
    assert noisy.splits["train"]["text"] == clean.splits["train"]["text"]
    changed = sum(truth[t] != y for t, y in zip(noisy.splits["train"]["text"], noisy.splits["train"]["label"]))
    assert changed / len(noisy.splits["train"]) == pytest.approx(0.3, abs=0.04)
    for name in ("validation", "test"):
        assert all(truth[t] == y for t, y in zip(noisy.splits[name]["text"], noisy.splits[name]["label"]))


# ---------------------------------------------------------------- caps


def test_max_train_and_eval_samples(clean_synthetic):
    capped = load_text_data(DataConfig(name="synthetic", synthetic_train_size=4000, synthetic_test_size=500,
                                       max_train_samples=300, max_eval_samples=50), seed=0)
    full = clean_synthetic
    assert len(capped.splits["train"]) == 300
    assert len(capped.splits["validation"]) == 50
    assert len(capped.splits["test"]) == 50
    assert capped.stats["train"] == 300 and capped.stats["test"] == 50
    # the caps take subsets of the uncapped splits
    assert set(capped.splits["train"]["text"]) <= set(full.splits["train"]["text"])
    assert set(capped.splits["validation"]["text"]) <= set(full.splits["validation"]["text"])
    assert set(capped.splits["test"]["text"]) <= set(full.splits["test"]["text"])
    # a cap above the size changes nothing
    roomy = load_text_data(DataConfig(name="synthetic", synthetic_train_size=4000, synthetic_test_size=500,
                                      max_train_samples=10**6, max_eval_samples=10**6), seed=0)
    assert {k: len(v) for k, v in roomy.splits.items()} == {k: len(v) for k, v in full.splits.items()}


# ---------------------------------------------------------------- eval.test=false: the test split unread


def corrupt(path) -> None:
    path.write_bytes(b"not a data file, and reading it fails")


def hub_folder(root, splits: dict) -> str:
    (root / "data").mkdir(parents=True)
    for name, split in splits.items():
        split.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return str(root)


def test_a_rebuilt_hub_folder_is_read_again_not_taken_from_the_cache(tmp_path):
    splits = {"train": small_dataset(90), "validation": small_dataset(12, offset=500), "test": small_dataset(30, offset=1000)}
    folder = hub_folder(tmp_path / "set", splits)
    (tmp_path / "set" / "README.md").write_text(  # a card naming its files, as datasets/pypi_topics has
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {n}\n    path: data/{n}-00000-of-00001.parquet\n" for n in splits) + "---\n")
    assert len(load_text_data(DataConfig(name="custom", path=folder), seed=0).splits["train"]) == 90
    small_dataset(60, offset=95).to_parquet(str(tmp_path / "set" / "data" / "train-00000-of-00001.parquet"))
    os.utime(tmp_path / "set" / "data" / "train-00000-of-00001.parquet", (1e9, 1e9))  # another mtime, same second or not
    train = load_text_data(DataConfig(name="custom", path=folder), seed=0).splits["train"]
    assert len(train) == 60 and "document number 95 about alpha" in train["text"]


def test_without_test_an_unreadable_test_file_is_never_read(tmp_path):
    folder = hub_folder(tmp_path / "hub", {"train": small_dataset(90), "validation": small_dataset(12, offset=500),
                                           "test": small_dataset(30, offset=1000)})
    corrupt(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    data = load_text_data(DataConfig(name="custom", path=folder), seed=0, with_test=False)
    assert set(data.splits) == {"train", "validation"} and "test" not in data.stats
    assert len(data.splits["train"]) == 90 and data.stats.get("validation_from_source") is True
    assert "test_carved_from_train" not in data.stats  # the source has a test split: nothing carved
    with pytest.raises(Exception):  # the check that the file is unreadable: reading it fails
        load_text_data(DataConfig(name="custom", path=folder), seed=1)


def test_without_test_save_to_disk_and_file_sources_skip_it(tmp_path):
    saved = tmp_path / "saved"
    DatasetDict(train=small_dataset(90), test=small_dataset(30, offset=1000)).save_to_disk(str(saved))
    for arrow in (saved / "test").glob("*.arrow"):
        corrupt(arrow)
    data = load_text_data(DataConfig(name="custom", path=str(saved)), seed=0, with_test=False)
    assert set(data.splits) == {"train", "validation"} and len(data.splits["train"]) == 81
    write_records(tmp_path / "train.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(40)])
    corrupt(tmp_path / "test.jsonl")
    data = load_text_data(DataConfig(name="custom", path=str(tmp_path / "train.jsonl"),
                                     test_path=str(tmp_path / "test.jsonl")), seed=0, with_test=False)
    assert set(data.splits) == {"train", "validation"} and len(data.splits["train"]) == 36


@pytest.mark.parametrize("source", ["single", "validation_as_test"])
def test_train_and_validation_are_the_same_with_and_without_test(tmp_path, source):
    """A test split carved from train is still carved without test (else train and validation would
    change); sst2's validation split, which serves as its test split, is not read without test."""
    folder = tmp_path / source
    if source == "single":
        small_dataset(100).save_to_disk(str(folder))
        cfg = DataConfig(name="custom", path=str(folder), max_eval_samples=7)
    else:
        DatasetDict(train=small_dataset(90), validation=small_dataset(30, offset=1000)).save_to_disk(str(folder))
        for arrow in (folder / "validation").glob("*.arrow"):
            corrupt(arrow)
        cfg = DataConfig(name="sst2", path=str(folder), text_fields=["text"], label_field="label")
    without = load_text_data(cfg, seed=4, with_test=False)
    assert set(without.splits) == {"train", "validation"}
    if source == "validation_as_test":
        with pytest.raises(Exception):
            load_text_data(cfg, seed=4)
        DatasetDict(train=small_dataset(90), validation=small_dataset(30, offset=1000)).save_to_disk(str(folder))
    full = load_text_data(cfg, seed=4)
    for name in ("train", "validation"):
        assert without.splits[name]["text"] == full.splits[name]["text"], name
        assert without.splits[name]["label"] == full.splits[name]["label"], name
    assert set(full.splits) == {"train", "validation", "test"}


# ---------------------------------------------------------------- no order assumed of a source's files


def sorted_by_label(n: int, offset: int = 0) -> Dataset:
    """small_dataset's texts grouped by label, as many exports store them: any prefix holds one class."""
    return small_dataset(n, offset=offset).sort("label")


@pytest.mark.parametrize("layout", ["single_file", "three_splits"])
def test_caps_take_every_class_from_a_label_sorted_source(tmp_path, layout):
    """No cap, carve or split assumes a shuffled file: the caps are random draws (not stratified), so each
    capped split holds every class with no class at more than half (a prefix of the file would hold one)."""
    if layout == "single_file":
        path = tmp_path / "sorted.jsonl"
        write_records(path, [{"text": t, "label": y} for t, y in zip(*sorted_by_label(300)[:].values())])
    else:
        path = tmp_path / "sorted"
        DatasetDict(train=sorted_by_label(300), validation=sorted_by_label(90, offset=500),
                    test=sorted_by_label(90, offset=1000)).save_to_disk(str(path))
    data = load_text_data(DataConfig(name="custom", path=str(path), max_train_samples=60, max_eval_samples=30),
                          seed=0)
    for name in ("train", "validation", "test"):
        counts = Counter(data.splits[name]["label"])
        assert len(counts) == 3 and max(counts.values()) <= len(data.splits[name]) / 2, (name, counts)


@pytest.mark.parametrize("fmt", ["jsonl", "hub"])
def test_splits_do_not_depend_on_the_file_order(tmp_path, fmt):
    """The same texts grouped by label and shuffled give the same splits, row for row: the training split
    is put in content order before anything is carved, capped, noised or drawn."""
    rows = [{"text": t, "label": y} for t, y in zip(*sorted_by_label(300)[:].values())]
    held_out = [{"text": t, "label": y} for t, y in zip(*sorted_by_label(60, offset=1000)[:].values())]
    cfg = dict(name="custom", max_train_samples=150, max_eval_samples=20, label_noise=0.1)
    loaded = []
    for name, ordered in (("sorted", rows), ("shuffled", [rows[i] for i in np.random.default_rng(0).permutation(300)])):
        if fmt == "jsonl":  # one file: test and validation are carved from it
            write_records(path := tmp_path / f"{name}.jsonl", ordered)
        else:  # Hub layout with the source's own test split
            path = tmp_path / name
            (path / "data").mkdir(parents=True)
            pd.DataFrame(ordered).to_parquet(path / "data" / "train-00000-of-00001.parquet")
            pd.DataFrame(held_out).to_parquet(path / "data" / "test-00000-of-00001.parquet")
        loaded.append(load_text_data(DataConfig(path=str(path), **cfg), seed=3))
    for name in ("train", "validation", "test"):
        assert loaded[0].splits[name]["text"] == loaded[1].splits[name]["text"], name
        assert loaded[0].splits[name]["label"] == loaded[1].splits[name]["label"], name
    assert loaded[0].stats == loaded[1].stats

# ---------------------------------------------------------------- errors


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UserError) as info:
        load_text_data(DataConfig(name="agnews"), seed=0)
    message = str(info.value)
    assert "'agnews'" in message
    for name in known_names():
        assert name in message
    assert {"ag_news", "dbpedia_14", "imdb", "sst2", "synthetic", "custom"} <= set(known_names())


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="data.path") as info:
        load_text_data(DataConfig(name="ag_news", path=str(missing)), seed=0)
    assert "not found" in str(info.value)


def test_custom_without_path():
    with pytest.raises(UserError, match=r"data\.name=custom needs data\.path"):
        load_text_data(DataConfig(name="custom"), seed=0)


def test_folder_without_a_dataset(tmp_path):
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserError, match="data.path"):
        load_text_data(DataConfig(name="custom", path=str(tmp_path / "empty_folder")), seed=0)


def test_unreachable_hub_points_at_data_path():
    """HF_DATASETS_OFFLINE=1 (set by conftest): the Hub id cannot be fetched, the message says what to do."""
    with pytest.raises(UserError) as info:
        load_text_data(DataConfig(name="ag_news"), seed=0)
    message = str(info.value)
    assert "fancyzhx/ag_news" in message and "data.path=" in message
    assert "\n" not in message
