"""GPipe-style pipelined backpropagation for ``bp`` (``train.pipeline=true, method.name=bp``): the one stage
cut into partitions over devices, each batch split into micro-batches; equal to non-pipelined BP up to float
rounding. :class:`GPipe`. Design: docs/architecture.md, "Engines".
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..models import Carry
from .base import Engine
from .workers import Stopped, WorkerRun, cuda_streams, handoff, receive, thread_budget


class GPipe(Engine):
    """``forward_backward(batch) -> float``: the batch loss (the size-weighted mean of the micro-batch
    losses; ``nan`` if non-finite, and then no backward ran). ``run`` adds, per batch, ``seed(step)``
    before and ``step(finite)`` after (the optimizer update, or skipping it)."""

    def __init__(self, stage: nn.Module, devices: Sequence[torch.device | str], micro_batches: int = 4,
                 backward: Callable[[Tensor], None] | None = None,
                 threads_per_partition: int | Sequence[int | None] | None = None,
                 context: Callable[[], ContextManager] | None = None, queue_size: int = 2,
                 join_timeout_s: float = 60.0, step: Callable[[bool], None] | None = None,
                 seed: Callable[[int], None] | None = None):
        groups = list(stage.groups)
        if micro_batches < 1:
            raise ValueError("micro_batches must be >= 1")
        devices = [torch.device(d) for d in devices][: len(groups)]
        n, g = len(devices), len(groups)
        self.stage = stage
        self.partitions = [groups[p * g // n:(p + 1) * g // n] for p in range(n)]
        self.devices = devices
        for part, device in zip(self.partitions, devices):
            for group in part:
                group.to(device)
        stage.head.to(devices[-1])
        self.micro_batches = micro_batches
        self.backward = backward or (lambda loss: loss.backward())
        self.threads = thread_budget(threads_per_partition, devices)
        self.context = context or contextlib.nullcontext  # autocast is per thread: entered in each worker
        self.queue_size, self.join_timeout_s = queue_size, join_timeout_s
        self.streams = cuda_streams(devices)
        self.step, self.seed = step, seed

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, list[float]]]:
        for i, batch in enumerate(itertools.islice(batches, limit)):
            if self.seed is not None:
                self.seed(first_step + i)
            value = self.forward_backward(batch)
            if self.step is not None:
                self.step(math.isfinite(value))
            yield batch, [value]

    def forward_backward(self, batch: dict) -> float:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
        total = labels.shape[0]
        chunks = [c for c in zip(ids.tensor_split(self.micro_batches), mask.tensor_split(self.micro_batches),
                                 labels.tensor_split(self.micro_batches)) if c[2].shape[0] > 0]
        n = len(self.partitions)
        run = WorkerRun(self.devices, n, self.queue_size, self.join_timeout_s)
        value = [0.0]
        run.start([(f"pipeline-gpipe{p}", p, lambda current, p=p: self._work(run, p, len(chunks), total, value))
                   for p in range(n)], self.threads)
        try:
            for c_ids, c_mask, c_labels in chunks:
                run.put(run.queues[0], handoff(Carry(c_ids, c_mask), c_labels, self.devices[0]))
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            run.fail(-1, exc)
        run.join()
        run.raise_if_failed()
        return value[0]

    def _work(self, run: WorkerRun, p: int, count: int, total: int, value: list[float]) -> None:
        stream = self.streams[p]
        if stream is not None:
            torch.cuda.set_device(self.devices[p])
        last = p == len(self.partitions) - 1
        with (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()), torch.enable_grad():
            for _ in range(count):
                item = run.get(run.queues[p])
                receive(item, stream)
                with self.context():
                    carry = item.carry
                    for group in self.partitions[p]:
                        carry = group(carry)
                    out = self.stage.head(self.partitions[p][-1].pool(carry), item.labels) if last else None
                if not last:
                    run.put(run.queues[p + 1], handoff(carry, item.labels, self.devices[p + 1]))
                    continue
                loss = out.loss * (item.labels.shape[0] / total)
                v = float(loss.detach())
                value[0] += v
                if math.isfinite(v):
                    self.backward(loss)
