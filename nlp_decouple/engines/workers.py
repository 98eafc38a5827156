"""What both threaded engines share: a run of worker threads with one stop flag and the first failure,
bounded queues polled against that flag (nothing waits forever), device hand-offs, and per-thread
intra-op budgets.

Errors: any exception in a worker (or in iterating the input batches) stops every thread within
``POLL_S`` and is re-raised in the caller as :class:`PipelineError` naming the stage, with the original
exception as ``__cause__``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..models import Carry
from .placement import move

log = logging.getLogger("nlp_decouple")

POLL_S = 0.05  # how often a waiting thread re-checks the stop flag
END = object()  # sentinel: no more batches


class PipelineError(RuntimeError):
    """A stage (or the input) failed during a pipelined run; ``stage`` is its index (-1: the input
    iterable), the original exception is ``__cause__``."""

    def __init__(self, stage: int, device: torch.device | None, cause: BaseException):
        where = "the input batches" if stage < 0 else f"pipeline stage {stage} (on {device})"
        super().__init__(f"{where} failed: {type(cause).__name__}: {cause}")
        self.stage = stage


class Stopped(Exception):
    """Raised inside a thread when the run is being stopped (another thread failed or the caller left)."""


@dataclass
class Item:
    """One batch (or micro-batch) on its way to the next worker."""
    carry: Carry
    labels: Tensor | None
    stage_losses: list[float]  # the losses of the stages already done
    event: object | None = None  # torch.cuda.Event recorded after the copy to the receiving device


class WorkerRun:
    """One run of worker threads: ``start`` them, ``get``/``put`` on their queues, ``close`` (stop and
    join, idempotent), then ``raise_if_failed``. A worker reports the stage it is running in
    ``current[w]`` so a failure names it."""

    def __init__(self, devices: Sequence[torch.device], num_queues: int, queue_size: int,
                 join_timeout_s: float = 60.0):
        self.devices = list(devices)
        self.stop = threading.Event()
        self.error: tuple[int, BaseException] | None = None  # (stage, exception): the first failure wins
        self._lock = threading.Lock()
        self.queues = [queue.Queue(queue_size) for _ in range(num_queues)]
        self.out: queue.Queue = queue.Queue()  # unbounded: one small list per batch
        self.join_timeout_s = join_timeout_s
        self.threads: list[threading.Thread] = []

    def fail(self, stage: int, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = (stage, exc)
        self.stop.set()

    def start(self, targets: Sequence[tuple[str, int, Callable[[list[int]], None]]],
              budgets: Sequence[int | None]) -> None:
        """Start a thread per ``(name, first stage, fn)``; ``fn(current)`` runs with ``budgets[i]``
        intra-op threads and keeps ``current[0]`` at the stage it is running. Returns once every thread has
        fixed its own budget (``torch.set_num_threads`` also sets what later threads inherit: the
        caller's count is restored then)."""
        caller_threads = torch.get_num_threads()
        ready = [threading.Event() for _ in targets]

        def guarded(i: int, first: int, fn: Callable[[list[int]], None]) -> None:
            current = [first]
            try:
                set_threads(budgets[i])
                ready[i].set()
                fn(current)
            except Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self.fail(current[0], exc)
            finally:
                ready[i].set()

        self.threads = [threading.Thread(target=guarded, args=(i, first, fn), name=name, daemon=True)
                        for i, (name, first, fn) in enumerate(targets)]
        for t in self.threads:
            t.start()
        for event in ready:
            while not event.wait(POLL_S) and not self.stop.is_set():
                pass
        torch.set_num_threads(caller_threads)

    def get(self, q: queue.Queue, worker: bool = True):
        """Next item of ``q``; raises :class:`Stopped` once the run is stopping (a worker: at once; the
        caller: on a failure, or when stopped and nothing is left)."""
        while True:
            if self.stop.is_set() and (worker or self.error is not None):
                raise Stopped
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                if not worker and self.stop.is_set():
                    raise Stopped
                continue

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        """Wait for the threads to finish on their own (a failure stops the others within POLL_S)."""
        deadline = time.monotonic() + self.join_timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.close()

    def close(self) -> None:
        """Stop every thread and join them."""
        self.stop.set()
        deadline = time.monotonic() + self.join_timeout_s
        for t in self.threads:
            if t is threading.current_thread() or not t.ident:
                continue
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline thread %s did not end within %.0fs", t.name, self.join_timeout_s)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            stage, exc = self.error
            raise PipelineError(stage, self.devices[stage] if 0 <= stage < len(self.devices) else None, exc) from exc


def tensors(carry: Carry, labels: Tensor | None) -> list[Tensor]:
    out = [carry.hidden, carry.mask, *carry.extras.values()] + ([] if labels is None else [labels])
    if carry.state is not None:
        out.extend(carry.state)
    return out


def handoff(carry: Carry, labels: Tensor | None, device: torch.device) -> Item:
    """Copy carry and labels to ``device`` (called in the producing thread, under its stream); towards
    CUDA also record an event that the consumer's stream must wait for."""
    source = carry.hidden.device
    carry, labels = move(carry, device), move(labels, device)
    event = None
    if device.type == "cuda":
        # a copy from a GPU runs on the source device's current stream (the producer's stream, after
        # its forward); one from the CPU on the destination's current stream
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(source if source.type == "cuda" else device))
    # to the CPU the copy is blocking (non_blocking only towards CUDA): nothing to wait for
    return Item(carry, labels, [], event)


def receive(item: Item, stream) -> None:
    """Consumer side of :func:`handoff` on CUDA: wait for the copy, keep the allocator from reusing the
    tensors' memory before this stream is done with them."""
    if item.event is not None and stream is not None:
        stream.wait_event(item.event)
        for t in tensors(item.carry, item.labels):
            if t.is_cuda:
                t.record_stream(stream)


def thread_budget(spec, devices: Sequence[torch.device]) -> list[int | None]:
    """Intra-op threads per worker: ``None`` splits the caller's threads evenly over the CPU workers
    (at least 1 each) and leaves CUDA workers alone; an int for all; or one entry per worker."""
    n = len(devices)
    if spec is None:
        cpu = sum(d.type == "cpu" for d in devices)
        share = max(1, torch.get_num_threads() // max(cpu, 1))
        return [share if d.type == "cpu" else None for d in devices]
    if isinstance(spec, int):
        return [spec] * n
    spec = list(spec)
    if len(spec) != n:
        raise ValueError(f"threads_per_stage: {len(spec)} entries for {n} stages")
    return spec


def set_threads(n: int | None) -> None:
    if n is not None:
        torch.get_num_threads()  # initialise this thread's count first, or a later lazy init resets it
        torch.set_num_threads(n)


def cuda_streams(devices: Sequence[torch.device]) -> list:
    return [torch.cuda.Stream(device=d) if d.type == "cuda" else None for d in devices]
