"""The default engine: every stage in turn, in this process (data parallel when several processes run).

- ``bp``: one stage, one loss, one backward through everything;
- decoupled, ``method.backward=per_group``: each stage backpropagates its local loss and steps its own
  optimizer as soon as the loss exists, freeing that stage's graph before the next stage runs;
- decoupled, ``method.backward=sum``: the local losses are summed into one backward (exactly the same
  gradients, since no gradient crosses a cut) and one optimizer with a group per stage steps.

A non-finite loss skips that stage's update (``sum``: the whole step) on *every* process: whether a loss is
finite is agreed across ranks before any backward, since one rank skipping a DDP backward that the others
run would pair their gradient all-reduces out of order.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..classifier import StagedClassifier
from ..optim import Optimization
from .base import Engine


class Sequential(Engine):
    """``stages``: the model's stages as they are trained (DDP-wrapped twins under several processes).
    ``all_finite(flags)``: the flags AND-ed over every process (identity in one process)."""

    def __init__(self, model: StagedClassifier, stages: Sequence[nn.Module], opt: Optimization, per_group: bool,
                 all_finite: Callable[[list[bool]], list[bool]], seed: Callable[[int], None]):
        self.model, self.stages, self.opt, self.per_group = model, list(stages), opt, per_group
        self.all_finite, self.seed = all_finite, seed

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, list[float]]]:
        for i, batch in enumerate(itertools.islice(batches, limit)):
            self.seed(first_step + i)
            yield batch, self.step(batch)

    def step(self, batch: dict) -> list[float]:
        """One batch through every stage; returns each stage's loss (nan where its update was skipped)."""
        values, pending = [], []
        stream = self.model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        stages=self.stages)
        for k, out in enumerate(stream):
            loss = out.loss
            (finite,) = self.all_finite([bool(torch.isfinite(loss.detach()))]) if self.per_group else (True,)
            value = float(loss.detach())
            values.append(value if finite and math.isfinite(value) else math.nan)
            if k not in self.opt.optimizer_of:  # nothing to train in this stage (e.g. a frozen embedding)
                continue
            if self.per_group:
                if finite:
                    self.opt.update(self.opt.optimizer_of[k], loss)
            else:
                pending.append(loss)
        if pending:  # summed: one backward after every stage's forward; a non-finite loss skips the whole step
            agreed = self.all_finite([math.isfinite(v) for v in values])
            values = [v if ok else math.nan for v, ok in zip(values, agreed)]
            if all(agreed):
                self.opt.update(0, sum(pending))
        return values
