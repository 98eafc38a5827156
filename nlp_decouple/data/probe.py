"""The probe set (``eval.probe_samples``): the training texts that fit the layer-wise linear probes and
refresh SCPL's exit standardiser before each evaluation.

A seeded random subset of the training split, stratified by label when every class can be represented
(scikit-learn's ``train_test_split``), never a prefix. The draw is over row positions, which
:func:`nlp_decouple.data.loading.load_text_data` puts in content order: a training file grouped by label
gives the same set as a shuffled copy of it, and every process of a launch draws the same rows.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.model_selection import train_test_split

Draw = Literal["all", "stratified", "random"]


@dataclass
class ProbeSet:
    indices: list[int]  # rows of the training split
    draw: Draw  # all: the split is no larger than asked; random: some class cannot be stratified
    per_class: list[int]  # texts of each class in the set

    def stats(self) -> dict:
        """Size and class coverage, as results.json records them."""
        return {"size": len(self.indices), "draw": self.draw,
                "classes_present": sum(c > 0 for c in self.per_class), "classes_total": len(self.per_class),
                "min_per_class": min(self.per_class), "per_class": self.per_class}


def _stratifiable(counts: np.ndarray, size: int, total: int) -> bool:
    """scikit-learn's conditions: two texts of each present class, and room for each class on both sides."""
    present = counts[counts > 0]
    return present.min() >= 2 and size >= len(present) and total - size >= len(present)


def draw_probe_set(labels: Iterable[int], num_classes: int, size: int, seed: int) -> ProbeSet:
    """``size`` rows of a split with these ``labels``, drawn with ``seed``; every row when the split has no
    more than ``size``."""
    labels = np.asarray(list(labels), dtype=np.int64)
    rows = np.arange(len(labels))
    if size >= len(labels):
        chosen, draw = rows, "all"
    elif _stratifiable(np.bincount(labels, minlength=num_classes), size, len(labels)):
        chosen, _ = train_test_split(rows, train_size=size, stratify=labels, random_state=seed)
        draw = "stratified"
    else:
        chosen, draw = np.random.default_rng(seed).choice(rows, size=size, replace=False), "random"
    return ProbeSet(chosen.tolist(), draw, np.bincount(labels[chosen], minlength=num_classes).tolist())
