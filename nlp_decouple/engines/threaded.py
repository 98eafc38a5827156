"""Pipelined training of decoupled methods in one process: stage k on device k, one worker thread per
device slot.

SCPL's "parallel": while stage k+1 works on batch t, stage k already works on batch t+1. A decoupled
stage's update depends only on its own input stream (the *detached* carry from the stage below), so
every stage still sees the same batches in the same order, each forward followed by its own update,
exactly as the sequential engine does with ``method.backward=per_group``: the final weights are the same
(bit for bit under deterministic kernels and equal thread counts).

Hand-off: between workers sits a bounded queue (``queue_size``), so a fast stage runs at most
``queue_size + 1`` batches ahead of the next and memory stays bounded. Stage k: forward -> local loss ->
hand the detached carry and the labels, already copied to stage k+1's device, to the queue ->
``backward_and_step(k, loss)`` (backward, clipping, optimizer and scheduler step, in the stage's thread). Handing on
*before* the backward lets stage k+1 start as early as possible; the carry was detached, so stage k's
step cannot touch it. The end-of-run sentinel travels behind every batch, and each worker passes it on
only after its own last update: when ``run`` is exhausted, no worker touches weights (a checkpoint is
consistent), which is why the trainer checkpoints only between runs.

CUDA: each worker runs on its own ``torch.cuda.Stream``; the producer copies the carry to the next device
on its stream (``non_blocking``) and records an event the consumer's stream waits for. CPU: plain
threads; PyTorch releases the GIL inside its kernels, so workers overlap as far as the Python overhead
per op allows. ``torch.set_num_threads`` is per thread with the OpenMP backend, so each CPU worker gets
its own intra-op budget (``threads_per_stage``; default: the caller's threads split evenly).

Dropout draws from the process-wide generator, which the workers share: runs with dropout are not
reproducible bit for bit (the equality tests use dropout 0). Under fp16 one GradScaler would be updated
from several threads: the config refuses fp16 with a pipeline (use bf16).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import math
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..models import Carry
from .base import Engine
from .workers import END, Stopped, WorkerRun, cuda_streams, handoff, receive, thread_budget


class ThreadedPipeline(Engine):
    """Train the stages of a decoupled method as a pipeline, one worker thread per stage or per run of
    stages (``workers``, e.g. from :func:`~.placement.assign_workers`; a worker runs its stages one after
    the other).

    ``backward_and_step(k, loss)`` backpropagates stage k's local loss and steps stage k's own optimizer and
    scheduler; it runs in stage k's thread (under its CUDA stream), once per finite loss, in batch order.
    ``context`` (e.g. ``accelerator.autocast``) is entered around each stage's forward: autocast state is
    per thread. Each ``run`` starts fresh threads; leaving it early stops them after their current batch
    (earlier stages may then have trained on a few batches more than the last one: use ``limit``)."""

    chunk = 64

    def __init__(self, stages: Sequence[nn.Module], devices: Sequence[torch.device | str],
                 backward_and_step: Callable[[int, Tensor], None], decoupled: bool = True, queue_size: int = 2,
                 threads_per_stage: int | Sequence[int | None] | None = None, move_stages: bool = True,
                 context: Callable[[], ContextManager] | None = None, join_timeout_s: float = 60.0,
                 workers: Sequence[Sequence[int]] | None = None):
        if len(stages) != len(devices):
            raise ValueError(f"{len(stages)} stages but {len(devices)} devices")
        n = len(stages)
        self.workers = [list(w) for w in workers] if workers is not None else [[k] for k in range(n)]
        if [k for w in self.workers for k in w] != list(range(n)) or not all(self.workers):
            raise ValueError(f"workers must cut stages 0..{n - 1} into non-empty contiguous runs, in order; "
                             f"got {self.workers}")
        if any(len({str(devices[k]) for k in w}) > 1 for w in self.workers):
            raise ValueError("the stages of one worker must share a device")
        if not decoupled and len(stages) > 1:
            raise ValueError("a pipeline needs decoupled stages (no gradient across stages); a non-decoupled "
                             "model must be a single stage (bp)")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.stages = list(stages)
        self.devices = [torch.device(d) for d in devices]
        self.backward_and_step, self.decoupled, self.queue_size = backward_and_step, decoupled, queue_size
        self.join_timeout_s = join_timeout_s
        if move_stages:
            for stage, device in zip(self.stages, self.devices):
                stage.to(device)
        first = [self.devices[w[0]] for w in self.workers]  # each worker's device
        self.threads = thread_budget(threads_per_stage, first)
        self.context = context or contextlib.nullcontext
        self.streams = cuda_streams(first)
        self._active: WorkerRun | None = None

    def __enter__(self) -> "ThreadedPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, list[float]]]:
        if self._active is not None:
            raise RuntimeError("ThreadedPipeline.run: a run is already in progress")
        run = WorkerRun(self.devices, len(self.workers), self.queue_size, self.join_timeout_s)
        fed: collections.deque = collections.deque()  # the batches in flight, yielded beside their stage losses
        self._active = run
        try:
            run.start([("pipeline-input", -1, lambda current: self._feed(run, batches, limit, fed))]
                      + [(f"pipeline-worker{w}", self.workers[w][0], lambda current, w=w: self._loop(run, w, current))
                         for w in range(len(self.workers))], [None] + self.threads)
            while True:
                stage_losses = run.get(run.out, worker=False)
                if stage_losses is END:  # every worker passed it on after its last update: they are ending
                    run.join()
                    break
                yield fed.popleft(), stage_losses
        except Stopped:  # a failure: raised below
            pass
        finally:
            run.close()
            self._active = None
        run.raise_if_failed()

    def _feed(self, run: WorkerRun, batches: Iterable[dict], limit: int | None, fed: collections.deque) -> None:
        # islice stops before pulling batch limit+1, so a shared iterator can be run in chunks
        for batch in itertools.islice(batches, limit):
            fed.append(batch)
            carry = Carry(batch["input_ids"], batch["attention_mask"].bool())
            run.put(run.queues[0], handoff(carry, batch["labels"], self.devices[0]))
        run.put(run.queues[0], END)

    def _loop(self, run: WorkerRun, w: int, current: list[int]) -> None:
        stream = self.streams[w]
        if stream is None:
            return self._work(run, w, current)
        torch.cuda.set_device(self.devices[self.workers[w][0]])
        with torch.cuda.stream(stream):
            self._work(run, w, current)

    def _work(self, run: WorkerRun, w: int, current: list[int]) -> None:
        """Worker w: per batch, each of its stages in turn does forward -> local loss -> hand the detached
        carry on (to the next worker through its queue, or straight to its own next stage) -> update."""
        stages = self.workers[w]
        last_worker = w == len(self.workers) - 1
        inbox = run.queues[w]
        outbox = run.out if last_worker else run.queues[w + 1]
        with torch.enable_grad():
            while True:
                item = run.get(inbox)
                if item is END:  # passed on only after this worker's last update
                    run.put(outbox, END)
                    return
                receive(item, self.streams[w])
                carry, labels, stage_losses = item.carry, item.labels, item.stage_losses
                del item
                for k in stages:
                    current[0] = k
                    with self.context():
                        out = self.stages[k](carry, labels)
                    loss = out.loss
                    if loss is None:
                        raise RuntimeError("the stage returned no loss (a training pipeline needs a local loss "
                                           "in every stage)")
                    value = float(loss.detach())
                    finite = math.isfinite(value)
                    stage_losses = stage_losses + [value if finite else math.nan]
                    if k < len(self.stages) - 1:  # hand on first, so the next stage starts while this one updates
                        nxt = out.carry.detach() if self.decoupled else out.carry
                        if k == stages[-1]:
                            item = handoff(nxt, labels, self.devices[k + 1])
                            item.stage_losses = stage_losses
                            run.put(outbox, item)
                            del item
                        else:  # the worker's own next stage, on the same device
                            carry = nxt
                    del out
                    if finite:
                        self.backward_and_step(k, loss)
                    del loss
                if last_worker:
                    run.put(outbox, stage_losses)
