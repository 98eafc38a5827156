"""The default engine: every stage in turn, in this process (data parallel when several processes run).
One training step reads top to bottom in :meth:`Sequential.step`."""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..classifier import StagedClassifier
from ..optim import Optimization
from .base import Engine


class Sequential(Engine):
    """``stages``: the model's stages as they are trained (DDP-wrapped twins under several processes).
    ``agree(flags)``: a bool tensor AND-ed over every process, on the device (identity in one process).
    ``per_group``: backpropagate each stage's local loss as soon as it exists (else their sum, once)."""

    chunk = 32  # steps between two reads of the stage losses on the host (the trainer's only sync)

    def __init__(self, model: StagedClassifier, stages: Sequence[nn.Module], optimization: Optimization,
                 per_group: bool, agree: Callable[[Tensor], Tensor], seed: Callable[[int], None]):
        self.model, self.stages, self.optimization, self.per_group = model, list(stages), optimization, per_group
        self.agree, self.seed = agree, seed

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, Tensor]]:
        for i, batch in enumerate(itertools.islice(batches, limit)):
            self.seed(first_step + i)
            yield batch, self.step(batch)

    def step(self, batch: dict) -> Tensor:
        """One optimizer step over every stage. Returns the stage losses as one tensor on the device, ``nan``
        where that stage's update was skipped; nothing here waits for the device (no host read)."""
        o = self.optimization
        losses, summed = [], []
        outputs = self.model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                         stages=self.stages)
        for k, out in enumerate(outputs):
            losses.append(out.loss.detach())
            if k not in o.optimizer_of:  # nothing to train in this stage (e.g. a frozen embedding)
                continue
            if self.per_group:  # frees stage k's graph before stage k+1 runs; no gradient crosses the cut
                o.accelerator.backward(out.loss)
            else:
                summed.append(out.loss)
        if summed:
            o.accelerator.backward(sum(summed))
        losses = torch.stack(losses)
        # one fused finiteness check, agreed over processes (every rank ran the same backwards: a non-finite
        # loss only makes that stage's gradient non-finite, and the kernel skips it on every rank alike)
        finite = self.agree(torch.isfinite(losses))
        skip = ~finite if self.per_group else (~finite).any().expand_as(finite)  # summed: the whole step
        o.clip_per_stage(0)
        if o.accelerator.scaler is None:  # the fused kernel skips the flagged stages (found_inf)
            getattr(o.optimizers[0], "optimizer", o.optimizers[0]).step(skip=skip)  # the AdamW Accelerate wraps
        else:  # fp16 (summed backward only): the GradScaler skips a step whose gradients are not finite
            o.optimizers[0].step()
        o.schedulers[0].step()  # the learning rate follows the step count, skipped updates included
        o.optimizers[0].zero_grad(set_to_none=True)
        return losses.masked_fill(~finite, math.nan)
