"""Batch samplers that put several texts of each class into a batch (``data.sampler``).

A supervised contrastive loss learns only from anchors that have a positive in the batch. With many,
unbalanced classes a random batch leaves many anchors without one; these samplers build each batch
from groups of ``m`` texts of one class, so every anchor has at least ``m - 1`` positives.

An epoch has as many batches as random sampling would (``ceil(N / batch_size)``). The order depends
only on the generator's state when an epoch starts: the trainer re-seeds it per (seed, epoch), so a
resumed run that skips the first batches sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _cycled(pool: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
    """``count`` items of ``pool``: whole shuffled passes over it, as many as needed."""
    out: list[int] = []
    while len(out) < count:
        out += [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    return out[:count]


class ClassGroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // m`` groups, each ``m`` texts of one class.

    ``balanced=False`` (``data.sampler=grouped``): every class is cut into groups of ``m`` (its last
    group topped up from the same class), the groups are shuffled and dealt into batches, so every text
    appears once an epoch (a few more for the top-ups) and classes keep their natural frequency.
    ``balanced=True`` (``data.sampler=class_balanced``): each batch draws its classes uniformly (all
    distinct while there are enough classes) and ``m`` texts of each, cycling through a shuffled pass of
    the class, as metric-learning samplers do; rare classes are then repeated within an epoch and
    frequent ones only partly seen.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, samples_per_class: int,
                 generator: torch.Generator, balanced: bool = False):
        if samples_per_class < 1 or batch_size % samples_per_class:
            raise ValueError("batch_size must be a multiple of samples_per_class")
        self.by_class = [idx for idx in _indices_by_class(labels) if idx]
        self.m, self.groups_per_batch = samples_per_class, batch_size // samples_per_class
        self.num_batches = math.ceil(len(labels) / batch_size)
        self.generator, self.balanced = generator, balanced

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._balanced() if self.balanced else self._grouped()
        yield from batches

    def _grouped(self) -> list[list[int]]:
        g, m = self.generator, self.m
        groups = []
        for pool in self.by_class:
            order = _cycled(pool, math.ceil(len(pool) / m) * m, g)
            groups += [order[i:i + m] for i in range(0, len(order), m)]
        order = torch.randperm(len(groups), generator=g).tolist()
        # an epoch is num_batches batches: the groups go round again if there are too few (m large)
        need = self.num_batches * self.groups_per_batch
        dealt = [groups[order[i % len(order)]] for i in range(need)]
        per = self.groups_per_batch
        return [sum(dealt[b * per:(b + 1) * per], []) for b in range(self.num_batches)]

    def _balanced(self) -> list[list[int]]:
        g, m, c = self.generator, self.m, len(self.by_class)
        # each class's texts in one shuffled order, cycled through as the class is drawn
        streams = [_cycled(pool, 0, g) for pool in self.by_class]
        pos = [0] * c
        batches, deferred, passes = [], [], []
        for _ in range(self.num_batches):
            # classes come from shuffled passes over all classes (equal shares over the epoch); a class
            # already in this batch waits for the next one, so a batch's classes are distinct while
            # groups_per_batch <= classes
            classes = []
            while len(classes) < self.groups_per_batch:
                if not passes:
                    passes = _cycled(list(range(c)), c, g)
                k = deferred.pop(0) if deferred and deferred[0] not in classes else passes.pop(0)
                if k in classes and len(classes) < c:
                    deferred.append(k)
                else:
                    classes.append(k)
            batch = []
            for k in classes:
                pool = self.by_class[k]
                while len(streams[k]) < pos[k] + m:
                    streams[k] += _cycled(pool, len(pool), g)
                batch += streams[k][pos[k]:pos[k] + m]
                pos[k] += m
            batches.append(batch)
        return batches


def _indices_by_class(labels: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(max(labels) + 1)] if len(labels) else []
    for i, y in enumerate(labels):
        out[y].append(i)
    return out
