"""Class-grouped batch samplers: m texts per class in every batch, the epoch's length, every text seen,
the same batches for the same generator seed (so an exact mid-epoch resume replays them)."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from nlp_decouple.config import load_config
from nlp_decouple.data.sampling import ClassGroupedBatchSampler
from nlp_decouple.errors import UserError

# 10 unbalanced classes: 200, 100, 60, 30, 17, 9, 5, 3, 2, 1 texts
COUNTS = [200, 100, 60, 30, 17, 9, 5, 3, 2, 1]
LABELS = [c for c, n in enumerate(COUNTS) for _ in range(n)]


def epoch(balanced: bool, seed: int, m: int = 4, batch: int = 32) -> list[list[int]]:
    return list(ClassGroupedBatchSampler(LABELS, batch, m, torch.Generator().manual_seed(seed), balanced))


@pytest.mark.parametrize("balanced", [False, True])
def test_batches_are_groups_of_m_per_class_and_as_many_as_random(balanced):
    batches = epoch(balanced, seed=0)
    assert len(batches) == math.ceil(len(LABELS) / 32)
    for b in batches:
        assert len(b) == 32
        counts = Counter(LABELS[i] for i in b)
        assert all(n % 4 == 0 for n in counts.values()), counts  # whole groups of 4: >= 3 positives each
        assert all(len({LABELS[i] for i in b[g:g + 4]}) == 1 for g in range(0, 32, 4))


def test_grouped_shows_every_text_and_keeps_class_frequencies():
    batches = epoch(False, seed=0)
    seen = Counter(i for b in batches for i in b)
    assert set(seen) == set(range(len(LABELS)))  # every text at least once an epoch
    per_class = Counter(LABELS[i] for b in batches for i in b)
    # natural frequencies, up to the top-up of each class's last group (and a wrap to fill the epoch)
    assert all(COUNTS[c] <= per_class[c] <= COUNTS[c] + 3 + 8 for c in range(len(COUNTS))), per_class


def test_class_balanced_draws_distinct_classes_uniformly():
    batches = epoch(True, seed=0, m=2, batch=16)  # 8 groups of 2 from 10 classes: all distinct
    for b in batches:
        assert len({LABELS[i] for i in b}) == 8
    per_class = Counter(LABELS[i] for b in batches for i in b)
    assert per_class[9] > COUNTS[9] and per_class[0] < COUNTS[0]  # rare repeated, frequent partly seen
    assert max(per_class.values()) - min(per_class.values()) <= 2 * 2 * len(batches) // 10


@pytest.mark.parametrize("balanced", [False, True])
def test_same_seed_same_batches_other_seed_other_batches(balanced):
    assert epoch(balanced, seed=5) == epoch(balanced, seed=5)
    assert epoch(balanced, seed=5) != epoch(balanced, seed=6)


def test_skipping_batches_after_reseeding_replays_the_epoch_tail():
    """The trainer re-seeds the generator per epoch and skips the batches already done on resume."""
    from accelerate import Accelerator
    from accelerate.data_loader import skip_first_batches

    generator = torch.Generator()
    sampler = ClassGroupedBatchSampler(LABELS, 32, 4, generator)
    loader = Accelerator(cpu=True).prepare(DataLoader(list(range(len(LABELS))), batch_sampler=sampler))
    generator.manual_seed(11)
    full = [b.tolist() for b in loader]
    generator.manual_seed(11)
    tail = [b.tolist() for b in skip_first_batches(loader, 5)]
    assert len(full) == len(loader) and tail == full[5:]


def test_config_checks_samples_per_class():
    cfg = load_config(None, ["data.sampler=grouped", "data.samples_per_class=8", "train.batch_size=64"])
    assert cfg.data.sampler == "grouped" and cfg.data.samples_per_class == 8
    with pytest.raises(UserError, match="must divide train.batch_size"):
        load_config(None, ["data.sampler=class_balanced", "data.samples_per_class=5", "train.batch_size=64"])
    with pytest.raises(UserError, match="samples_per_class"):
        load_config(None, ["data.sampler=grouped", "data.samples_per_class=1"])
    load_config(None, ["data.samples_per_class=5", "train.batch_size=64"])  # ignored with random batches
