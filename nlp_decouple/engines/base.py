"""The interface every training engine has.

An engine trains on batches: ``run(batches, limit, first_step)`` takes at most ``limit`` batches from the
iterator and yields ``(batch, stage_losses)`` per batch, in batch order: every stage's loss (``nan`` where
non-finite: that update was skipped, on every process alike), as a list of floats or as a 1-D tensor left
on the device (the sequential engine: the trainer reads a chunk's losses at once, so no step waits). When
the generator is exhausted, the weights are *quiescent*: every update of every yielded batch is done and no
thread touches weights or optimizer state. The trainer checkpoints, evaluates and stops only then. The next ``run``
continues with the next batch of the same iterator.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from torch import Tensor


class Engine(ABC):
    chunk: int = 1  # at most this many batches per run() (threaded engines start their threads per run)

    @abstractmethod
    def run(self, batches: Iterator[dict], limit: int, first_step: int
            ) -> Iterator[tuple[dict, list[float] | Tensor]]:
        """Train on at most ``limit`` batches; see the module docstring."""

    def gather_weights(self) -> None:
        """Make this process's copy of every stage current before evaluation or saving (a process
        pipeline trains each stage on one rank only); nothing to do for the other engines."""

    def close(self) -> None:
        """End any threads (idempotent)."""
