"""The embedded synthetic dataset: seeded, balanced, one shared vocabulary, and word order matters."""
from __future__ import annotations

from collections import Counter

from datasets import ClassLabel

from nlp_decouple.config import DataConfig
from nlp_decouple.data import load_text_data, make_synthetic


def test_seeded_and_sized():
    a = make_synthetic(300, 100, seed=7)
    b = make_synthetic(300, 100, seed=7)
    c = make_synthetic(300, 100, seed=8)
    assert a["train"]["text"] == b["train"]["text"] and a["train"]["label"] == b["train"]["label"]
    assert a["test"]["text"] == b["test"]["text"] and a["test"]["label"] == b["test"]["label"]
    assert a["train"]["text"] != c["train"]["text"]
    other = make_synthetic(50, 20, seed=7)
    assert (len(other["train"]), len(other["test"])) == (50, 20)
    assert (len(a["train"]), len(a["test"])) == (300, 100)
    assert other["train"]["text"] == make_synthetic(50, 20, seed=7)["train"]["text"]


def test_four_balanced_classes_and_plain_text():
    data = make_synthetic(4000, 1000, seed=0)
    for name, split in data.items():
        feature = split.features["label"]
        assert isinstance(feature, ClassLabel) and feature.num_classes == 4
        counts = Counter(split["label"])
        assert set(counts) == {0, 1, 2, 3}
        share = [counts[c] / len(split) for c in range(4)]
        assert all(0.2 <= p <= 0.3 for p in share), (name, share)
        lengths = [len(t.split()) for t in split["text"]]
        assert min(lengths) >= 5 and max(lengths) <= 40
        assert all(t == t.strip() and "  " not in t for t in split["text"])
    # train and test are different draws
    assert not set(data["train"]["text"][:200]) & set(data["test"]["text"])


def test_vocabulary_is_shared_across_classes():
    data = make_synthetic(2000, 10, seed=0)
    vocab = [set() for _ in range(4)]
    for text, label in zip(data["train"]["text"], data["train"]["label"]):
        vocab[label].update(text.split())
    union, common = set.union(*vocab), set.intersection(*vocab)
    assert len(union) >= 30
    # no word gives a class away by its mere presence
    assert len(common) / len(union) >= 0.95, sorted(union - common)


def test_label_needs_word_order():
    """Unigram bag-of-words cannot see "not good" vs "good ... not"; adding bigrams can."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    data = make_synthetic(2000, 1000, seed=1)
    train, test = data["train"], data["test"]
    scores = {}
    for ngrams in [(1, 1), (1, 2)]:
        vec = CountVectorizer(ngram_range=ngrams, token_pattern=r"\S+", binary=True, min_df=5)
        model = LogisticRegression(max_iter=1000).fit(vec.fit_transform(train["text"]), train["label"])
        scores[ngrams] = model.score(vec.transform(test["text"]), test["label"])
    assert scores[(1, 1)] > 0.4  # far above chance (0.25): the words carry signal...
    assert scores[(1, 2)] - scores[(1, 1)] >= 0.15, scores  # ...but order carries much more


def test_load_text_data_default_is_synthetic():
    data = load_text_data(DataConfig(synthetic_train_size=400, synthetic_test_size=100), seed=0)
    assert data.num_classes == 4
    assert data.label_names == data.splits["train"].features["label"].names
    assert len(data.splits["test"]) == 100
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 400
    assert len(data.splits["validation"]) == 40
    assert data.max_length == 32
    # the data itself does not depend on the run seed (only the validation carve does)
    other = load_text_data(DataConfig(synthetic_train_size=400, synthetic_test_size=100), seed=1)
    assert data.splits["test"]["text"] == other.splits["test"]["text"]
    assert sorted([*data.splits["train"]["text"], *data.splits["validation"]["text"]]) == \
        sorted([*other.splits["train"]["text"], *other.splits["validation"]["text"]])
    assert data.splits["validation"]["text"] != other.splits["validation"]["text"]
