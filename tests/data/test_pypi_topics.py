"""The committed datasets/pypi_topics loads with the package's loader and is what its card says: the splits,
the classes and the per-class counts of the card's table, clean texts, no text in two splits."""
from __future__ import annotations

import re
from collections import Counter

import pytest
from conftest import REPO

from nlp_decouple.config import DataConfig
from nlp_decouple.data import load_text_data

PYPI_TOPICS = REPO / "datasets" / "pypi_topics"
SPLITS = ("train", "validation", "test")
# e-mail addresses as written, plain or spelled out (written independently of the builder's own patterns)
EMAIL = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # plain
    r"|[\w.+-]+\s*[\[({<]\s*(?i:at)\s*[\])}>]\s*[\w-]+"  # name [at] host, name (AT) host
    r"|\b[\w.+-]+\s+AT\s+[\w-]+(?:\.|\s+DOT\s+)\w"  # name AT host.org, name AT host DOT org
    r"|\b[\w.+-]+\s+(?i:at)\s+[\w-]+(?:\s*[\[({<]\s*(?i:dot)\s*[\])}>]\s*|\s+(?i:dot)\s+)[a-z]{2,}\b"  # name at host dot org
    r"|\b[a-z]{2,}[.+][a-z]{2,}\d*\s+at\s+(?:<url>|[\w-]+\.[a-z]{2,}\b)")  # first.last at host.org, at <url>
REST_LITERAL = re.compile(r"(?<=\S)::(?=\s|$)|(?<!\S)::(?!\S)")  # "Example::", "Example ::", "::"; not std::vector


def card_counts() -> dict[str, dict[str, int]]:
    """label -> split -> count, from the card's table (rows `| label | train | validation | test | all | share |`)."""
    table = {}
    for line in (PYPI_TOPICS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"[\d,]+", cells[1]) and not cells[0].startswith("**"):
            table[cells[0]] = {s: int(c.replace(",", "")) for s, c in zip(SPLITS, cells[1:4])}
    return table


@pytest.fixture(scope="module")
def pypi_topics():
    return load_text_data(DataConfig(name="custom", path=str(PYPI_TOPICS)), seed=0)


def test_loads_with_its_own_splits_and_the_cards_classes_and_counts(pypi_topics):
    data = pypi_topics
    assert data.stats.get("validation_from_source") and not data.stats.get("test_carved_from_train")
    expected = card_counts()
    assert data.label_names == sorted(expected) and 10 <= data.num_classes <= 25
    for split in SPLITS:
        got = Counter(data.label_names[y] for y in data.splits[split]["label"])
        assert got == Counter({name: per[split] for name, per in expected.items()}), split
    assert min(sum(per.values()) for per in expected.values()) >= 150
    assert sum(len(data.splits[s]) for s in SPLITS) >= 12_000


def test_texts_are_clean_and_never_shared_between_splits(pypi_topics):
    texts = {s: pypi_topics.splits[s]["text"] for s in SPLITS}
    every = [t for s in SPLITS for t in texts[s]]
    assert len(set(every)) == len(every)
    assert min(map(len, every)) >= 20
    classifier = r"\bTopic\s+::"  # the label's own classifier
    classifier_or_address = classifier + r"|(?:https?://|www\.)[\w-]+\.[\w-]"
    assert not [t for t in every if re.search(classifier_or_address, t)]  # placeholders stand for them


def test_no_email_address_or_rest_literal_marker_survives(pypi_topics):
    every = [t for s in SPLITS for t in pypi_topics.splits[s]["text"]]
    assert [m.group(0) for t in every if (m := EMAIL.search(t))] == []
    assert [t[max(0, m.start() - 40):m.end() + 40] for t in every if (m := REST_LITERAL.search(t))] == []
