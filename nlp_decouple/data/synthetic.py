"""A seeded synthetic text-classification set that needs word order: the embedded offline default.

Each text mentions a topic (sports or tech, by topic words drawn with some noise) and gives an opinion
(a sentiment word). A "not" right before the sentiment word flips it; a "not" elsewhere does not. The
label is topic x polarity (4 classes): a bag-of-words model stays near 70%; order is needed beyond.
"""
from __future__ import annotations

import random

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

TOPICS = {
    "sports": "match team goal coach season league player score stadium cup race medal".split(),
    "tech": "software chip network data robot code server phone laptop cloud model battery".split(),
}
POSITIVE = "good great excellent superb fine brilliant pleasant solid".split()
NEGATIVE = "bad awful poor terrible weak dull broken sloppy".split()
FILLER = (
    "the a this that it was is today yesterday really quite very some news report people said we they "
    "new old first last week year about over with from for and but also then again here there"
).split()
LABEL_NAMES = ("sports_positive", "sports_negative", "tech_positive", "tech_negative")


def _example(rng: random.Random) -> tuple[str, int]:
    topic = rng.randrange(2)
    own, other = (TOPICS["sports"], TOPICS["tech"]) if topic == 0 else (TOPICS["tech"], TOPICS["sports"])
    words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
    for _ in range(rng.randint(2, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(own))
    if rng.random() < 0.3:  # a distracting word from the other topic
        words.insert(rng.randrange(len(words) + 1), rng.choice(other))
    positive_word = rng.random() < 0.5
    phrase = [rng.choice(POSITIVE if positive_word else NEGATIVE)]
    negated = rng.random() < 0.3  # rare enough that the opinion word alone is a signal to start from
    if negated:
        phrase.insert(0, "not")
    at = rng.randrange(len(words) + 1)
    words[at:at] = phrase
    if not negated and rng.random() < 0.4:  # a "not" after the opinion changes nothing
        words.insert(at + len(phrase) + rng.randint(0, 2), "not")
    positive = positive_word != negated
    return " ".join(words), topic * 2 + (0 if positive else 1)


def make_synthetic(train_size: int = 4000, test_size: int = 1000, seed: int = 0) -> DatasetDict:
    rng = random.Random(seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES))})

    def split(n: int) -> Dataset:
        rows = [_example(rng) for _ in range(n)]
        return Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features)

    return DatasetDict(train=split(train_size), test=split(test_size))
