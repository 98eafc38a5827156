"""Pipelined training of decoupled methods: stage k on device k, one worker thread per device slot.

SCPL's "parallel": while stage k+1 works on batch t, stage k already works on batch t+1. A decoupled
stage's update depends only on its own input stream (the *detached* carry from the stage below), so
every stage still sees the same batches in the same order, each forward followed by its own update,
exactly as :meth:`Trainer.train_step` does sequentially with ``method.backward=per_group``: the final
weights are the same (bit for bit under deterministic kernels and equal thread counts).

Pieces:

- :func:`assign_devices` turns ``train.devices`` (``auto``, one device, or a list) into one
  ``torch.device`` per stage; :func:`place_stages` moves each stage there and (optionally) installs a
  forward pre-hook that moves an incoming carry and labels to the stage's device, so the *unchanged*
  sequential paths (``StagedClassifier.run``/``iter_stages``, ``evaluation.collect``, ``train_step``)
  run across devices too -- evaluation needs nothing else.
- :func:`assign_workers` says which stages share a worker thread: with ``train.devices`` a list shorter
  than the stages (``[cpu, cpu]`` for 5 stages), the stages on one entry run in one worker, so a CPU
  pipeline has a thread per listed core, not per stage.
- :class:`PipelineRunner` trains: ``run(batches)`` yields, per batch and in batch order, every stage's
  loss value (``nan`` where non-finite; that stage's update is then skipped, as in the trainer).
- :func:`run_placed`: inference through placed stages without hooks (what ``StagedClassifier.run``
  does, moving the carry per stage).
- :class:`GPipeBP`: GPipe-style pipelined ``bp`` (micro-batches through the groups on their devices,
  gradients accumulated, one step per batch; equal to plain BP up to float rounding).

Wiring into the trainer (``train.pipeline: true``, ``train.devices``), single process, decoupled method
with ``method.backward=per_group``::

    devices = assign_devices(cfg.train.devices, len(model.stages))
    place_stages(model.stages, devices)        # before the first optimizer step; evaluation now works as is
    def update(k, loss):                       # a frozen stage has no optimizer: nothing to do
        if k in self.optimizer_of:
            self._update(self.optimizer_of[k], [k], loss)
    runner = PipelineRunner(model.stages, devices, update, workers=assign_workers(cfg.train.devices, len(devices)))
    try:
        for epoch ...:
            left = None if max_steps is None else max_steps - step
            for batch, values in runner.run(self.train_loader, limit=left, with_batch=True):
                step += 1; samples += batch["labels"].shape[0]; self._check_finite(values, step) ...
    finally:
        runner.close()

How the hand-off works. Between stages sits a bounded queue (``queue_size``), so a fast stage runs at
most ``queue_size + 1`` batches ahead of the next and memory stays bounded. Stage k: forward → local loss
→ hand the detached carry (hidden, mask, LSTM state, extras) and the labels, already copied to stage
k+1's device, to the queue → ``update(k, loss)`` (backward, clipping, optimizer and scheduler step:
the trainer's own code, run in the stage's thread). Handing on *before* the backward lets stage k+1
start as early as possible; the carry was detached, so stage k's backward and step cannot touch it.

CUDA: each stage runs on its own ``torch.cuda.Stream``. The producer copies the carry to the next
device on its own stream (``non_blocking``) and records an event; the consumer makes its stream wait
for that event and marks the tensors with ``record_stream`` so the caching allocator does not reuse
them early. CPU: plain threads; PyTorch releases the GIL inside its kernels, so workers overlap as far
as the Python overhead per op allows. Against BP on the same cores the pipeline gains where BP cannot
use the cores by itself (small matrices) and loses where intra-op threading already does; the stages
must cost about the same (see benchmarks/pipeline_throughput.py and docs/benchmarks.md).
``torch.set_num_threads`` is per thread with the OpenMP backend (each thread keeps its own OpenMP
thread count once initialised), so each CPU stage gets its own intra-op budget (``threads_per_stage``;
default: the caller's threads split evenly over the CPU stages, at least 1).

Errors: any exception in a stage (or in iterating ``batches``) stops every thread (queues are polled
with a timeout and a shared stop flag; nothing waits forever) and is re-raised in the caller as
:class:`PipelineError` naming the stage, with the original exception as ``__cause__``.

Not covered: several processes (DDP) per stage -- the runner is single-process; pass the plain stages.
Under ``train.mixed_precision=fp16`` the trainer's single GradScaler would be updated from several
threads at once: use ``bf16`` or ``no`` with the pipeline (autocast itself is entered inside each
prepared stage's forward, so it applies in the worker threads).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import UserError
from .methods import StageOutput
from .models import Carry

log = logging.getLogger("nlp_decouple")

_POLL_S = 0.05  # how often a waiting thread re-checks the stop flag


# ---------------------------------------------------------------------------------------------- placement
def _parse_device(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"train.devices: {name!r} is not a device; use e.g. cpu, cuda, cuda:1") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.devices: {name!r} asked for but CUDA is not available; use cpu or auto")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UserError(f"train.devices: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are "
                            "visible")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise UserError(f"train.devices: {name!r}: only cpu and cuda devices are supported")
    return device


def _is_auto(spec) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto")


def _slots(n: int, num_stages: int) -> list[int]:
    """Slot of each stage among n slots: contiguous and balanced, stage k in slot k * n // num_stages
    (fewest cross-slot hand-offs); with at least as many slots as stages, stage k in slot k."""
    if n >= num_stages:
        return list(range(num_stages))
    return [k * n // num_stages for k in range(num_stages)]


def _spread(devices: list[torch.device], num_stages: int) -> list[torch.device]:
    """The stages over ``devices`` in contiguous, balanced blocks (see :func:`_slots`)."""
    return [devices[slot] for slot in _slots(len(devices), num_stages)]


def assign_devices(spec: str | Sequence[str | torch.device] | torch.device | None,
                   num_stages: int) -> list[torch.device]:
    """One device per stage.

    - ``None`` or ``"auto"``: the visible CUDA devices, stages spread over them in contiguous, balanced
      blocks (2 devices, 4 stages: 0, 0, 1, 1; more devices than stages: the first ones); no CUDA: cpu.
    - one device (``"cpu"``, ``"cuda:1"``): every stage there.
    - a list: one entry per stage; a shorter list is spread like ``auto`` (``["cuda:0", "cuda:1"]`` with
      4 stages: 0, 0, 1, 1), extra entries are ignored (a one-stage ``bp`` run takes the first).
    Raises :class:`UserError` for unknown or invisible devices."""
    if num_stages < 1:
        raise ValueError("num_stages must be >= 1")
    if _is_auto(spec):
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            pool = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        else:
            pool = [torch.device("cpu")]
        return _spread(pool, num_stages)
    if isinstance(spec, (str, torch.device)):
        return [_parse_device(spec)] * num_stages
    entries = list(spec)
    if not entries:
        raise UserError("train.devices: an empty list; use auto, one device or one per stage")
    pool = [_parse_device(d) for d in entries]
    if len(pool) > num_stages:
        log.info("train.devices lists %d devices for %d stage(s): using %s", len(pool), num_stages,
                 [str(d) for d in pool[:num_stages]])
    return _spread(pool, num_stages)


def assign_workers(spec: str | Sequence[str | torch.device] | torch.device | None,
                   num_stages: int) -> list[list[int]]:
    """Which stages share a worker thread, as contiguous runs of stage indices.

    A list of devices (or ``auto`` over several GPUs) shorter than the stages gives one worker per entry,
    running the stages placed on it one after the other -- the same contiguous blocks as
    :func:`assign_devices` (``[cpu, cpu]`` with 5 stages: ``[[0, 1, 2], [3, 4]]``), so a CPU pipeline has as
    many workers as listed cores rather than a thread per stage competing for them. Otherwise (one device,
    or at least as many entries as stages) each stage has its own worker."""
    if isinstance(spec, (list, tuple)):
        slots = len(spec)
    elif _is_auto(spec) and torch.cuda.is_available():
        slots = torch.cuda.device_count()
    else:
        slots = num_stages
    workers: list[list[int]] = []
    for k, slot in enumerate(_slots(slots or num_stages, num_stages)):  # the blocks _spread places
        if slot == len(workers):
            workers.append([])
        workers[slot].append(k)
    return workers


def _move(obj, device: torch.device):
    non_blocking = device.type == "cuda"  # a non-blocking copy *to* the CPU could be read too early
    if isinstance(obj, Carry):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=non_blocking)
    return obj


def place_stages(stages: Sequence[nn.Module], devices: Sequence[torch.device],
                 move_inputs: bool = True) -> list:
    """Move stage k to ``devices[k]``; with ``move_inputs`` also install a forward pre-hook that moves
    the incoming carry and labels (any Carry/Tensor argument) to that device, so sequential code that
    hands one stage's carry to the next (``iter_stages``, ``run``, ``collect``) works across devices.
    Returns the hook handles (``handle.remove()`` undoes the hooks).

    Move stages before their optimizers first step (optimizer state is created on the parameters'
    device at the first step; ``Module.to`` keeps the same Parameter objects, so optimizers built
    earlier stay valid). Accelerate's ``prepare(stage)`` moves a stage to its own device: place after it."""
    if len(stages) != len(devices):
        raise ValueError(f"{len(stages)} stages but {len(devices)} devices")
    handles = []
    for stage, device in zip(stages, devices):
        stage.to(device)
        if move_inputs:
            def hook(module, args, kwargs, device=device):
                return (tuple(_move(a, device) for a in args), {k: _move(v, device) for k, v in kwargs.items()})
            handles.append(stage.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@torch.no_grad()
def run_placed(stages: Sequence[nn.Module], devices: Sequence[torch.device], input_ids: Tensor,
               attention_mask: Tensor, labels: Tensor | None = None, return_pooled: bool = False,
               decoupled: bool = True,
               infer: Callable[[Sequence[nn.Module], list[StageOutput]], list[StageOutput]] | None = None
               ) -> list[StageOutput]:
    """Inference through stages that live on their own devices, without hooks: what
    ``StagedClassifier.run`` does, moving the carry (and labels) to each stage's device first. Outputs
    stay on their stage's device (``evaluation.collect`` calls ``.cpu()`` on what it keeps)."""
    carry = Carry(input_ids, attention_mask.bool())
    outs = []
    for k, (stage, device) in enumerate(zip(stages, devices)):
        if decoupled and k > 0:
            carry = carry.detach()
        carry = _move(carry, device)
        out = stage(carry, None if labels is None else _move(labels, device), return_pooled)
        carry = out.carry
        outs.append(out)
    if labels is None and infer is not None:
        outs = infer(list(stages), outs)
    return outs


# ---------------------------------------------------------------------------------------------- runner
class PipelineError(RuntimeError):
    """A stage (or the input) failed during a pipelined run; ``stage`` is its index (-1: the input
    iterable), the original exception is ``__cause__``."""

    def __init__(self, stage: int, device: torch.device | None, cause: BaseException):
        where = "the input batches" if stage < 0 else f"pipeline stage {stage} (on {device})"
        super().__init__(f"{where} failed: {type(cause).__name__}: {cause}")
        self.stage = stage


class _Stopped(Exception):
    """Raised inside a worker when the run is being stopped (another thread failed or the caller left)."""


_END = object()  # sentinel: no more batches


@dataclass
class _Item:
    index: int  # batch number within this run
    carry: Carry
    labels: Tensor
    values: list[float] = field(default_factory=list)  # loss values of the stages already done
    event: object | None = None  # torch.cuda.Event recorded after the copy to this stage's device


def _tensors(carry: Carry, labels: Tensor | None) -> list[Tensor]:
    out = [carry.hidden, carry.mask, *carry.extras.values()] + ([] if labels is None else [labels])
    if carry.state is not None:
        out.extend(carry.state)
    return out


def _fail(state: dict, stage: int, exc: BaseException) -> None:
    with state["lock"]:
        if state["error"] is None:
            state["error"] = (stage, exc)
    state["stop"].set()


def _get(state: dict, q: queue.Queue, worker: bool):
    """Next item of ``q``; raises :class:`_Stopped` once the run is stopping (a worker: at once; the
    caller: on a failure, or when stopped and nothing is left)."""
    while True:
        if state["stop"].is_set() and (worker or state["error"] is not None):
            raise _Stopped
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if not worker and state["stop"].is_set():
                raise _Stopped
            continue


def _put(state: dict, q: queue.Queue, item) -> None:
    while True:
        if state["stop"].is_set():
            raise _Stopped
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _handoff(carry: Carry, labels: Tensor | None, device: torch.device
             ) -> tuple[Carry, Tensor | None, object | None]:
    """Copy carry and labels to ``device`` (called in the producing thread, under its stream); towards
    CUDA also return an event that the consumer's stream must wait for."""
    source = carry.hidden.device
    carry, labels = _move(carry, device), _move(labels, device)
    event = None
    if device.type == "cuda":
        # a copy from a GPU runs on the source device's current stream (the producer's stream, after
        # its forward); one from the CPU on the destination's current stream
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(source if source.type == "cuda" else device))
    # to the CPU the copy is blocking (non_blocking only towards CUDA): nothing to wait for
    return carry, labels, event


def _receive(item_event, stream, tensors: list[Tensor]) -> None:
    """Consumer side of :func:`_handoff` on CUDA: wait for the copy, keep the allocator from reusing
    the tensors' memory before this stream is done with them."""
    if item_event is not None and stream is not None:
        stream.wait_event(item_event)
        for t in tensors:
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


def _set_threads(n: int | None) -> None:
    if n is not None:
        torch.get_num_threads()  # initialise this thread's count first, or a later lazy init resets it
        torch.set_num_threads(n)


class PipelineRunner:
    """Train the stages of a decoupled method as a pipeline, one worker thread per stage (or per run of
    stages: ``workers``, e.g. from :func:`assign_workers`; a worker runs its stages one after the other).

    ``update(k, loss)`` backpropagates stage k's local loss and steps stage k's own optimizer and
    scheduler; it is called in stage k's thread (under its CUDA stream), once per finite loss, in batch
    order. The trainer passes ``self._update(self.optimizer_of[k], [k], loss)`` (nothing for a stage
    without an optimizer, e.g. a frozen embedding).

    ``run(batches, limit=None)`` yields one list per batch, in batch order: every stage's loss value
    (``nan`` where non-finite, update skipped). When the generator finishes, every stage has finished
    every batch. Leaving it early (``break``, an exception in the caller) stops the workers after their
    current batch: earlier stages may then have trained on a few batches more than the last one --
    use ``limit`` (e.g. the steps left before ``train.max_steps``) for an exact stop.

    Use one runner for the whole training (``with PipelineRunner(...) as runner:`` or ``close()``); each
    ``run`` starts fresh threads, so a new epoch is a new ``run``.

    ``context`` (e.g. ``accelerator.autocast``) is entered around each stage's forward in its worker:
    autocast state is per thread. Stages prepared by Accelerate carry their autocast in ``forward``
    already. ``threads_per_stage``: intra-op threads per CPU worker (see :func:`thread_budget`; one entry
    per worker when a list)."""

    def __init__(self, stages: Sequence[nn.Module], devices: Sequence[torch.device | str],
                 update: Callable[[int, Tensor], None], decoupled: bool = True, queue_size: int = 2,
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
        self.update = update
        self.decoupled = decoupled
        self.queue_size = queue_size
        self.join_timeout_s = join_timeout_s
        if move_stages:
            for stage, device in zip(self.stages, self.devices):
                stage.to(device)
        first = [self.devices[w[0]] for w in self.workers]  # each worker's device
        self.threads = thread_budget(threads_per_stage, first)
        self.context = context or contextlib.nullcontext
        self.streams = [torch.cuda.Stream(device=d) if d.type == "cuda" else None for d in first]
        self._active: dict | None = None
        self._closed = False

    # ------------------------------------------------------------------ public
    def __enter__(self) -> "PipelineRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop a run in progress (if any) and end its threads. Idempotent."""
        if self._active is not None:
            self._shutdown(self._active)
        self._closed = True

    def run(self, batches: Iterable[dict], limit: int | None = None, with_batch: bool = False
            ) -> Iterator[list[float]] | Iterator[tuple[dict, list[float]]]:
        """Feed ``batches`` (dicts with input_ids, attention_mask, labels) through the pipeline; yield
        every stage's loss value per batch, in batch order (``with_batch``: ``(batch, values)``, e.g.
        to count samples). ``limit``: stop after this many batches; the next ``run`` on the same
        iterator continues with the next batch (checkpoints every N steps: run in chunks of N and save
        between runs, when no worker is touching weights or optimizer state)."""
        if self._closed:
            raise RuntimeError("PipelineRunner is closed")
        if self._active is not None:
            raise RuntimeError("PipelineRunner.run: a run is already in progress")
        return self._run(batches, limit, with_batch)

    # ------------------------------------------------------------------ internals
    def _run(self, batches: Iterable[dict], limit: int | None, with_batch: bool):
        n = len(self.workers)
        state = {
            "stop": threading.Event(),
            "error": None,  # (stage, exception): the first failure wins
            "lock": threading.Lock(),
            "queues": [queue.Queue(self.queue_size) for _ in range(n)],  # queues[w]: into worker w
            "out": queue.Queue(),  # unbounded: one small list per batch
            "ready": [threading.Event() for _ in range(n)],
            "fed": collections.deque(),  # the batches in flight, for with_batch
            "with_batch": with_batch,
        }
        caller_threads = torch.get_num_threads()
        threads = [threading.Thread(target=self._feed, args=(state, batches, limit), name="pipeline-input",
                                    daemon=True)]
        threads += [threading.Thread(target=self._work, args=(state, w), name=f"pipeline-worker{w}", daemon=True)
                    for w in range(n)]
        state["threads"] = threads
        self._active = state
        try:
            for t in threads:
                t.start()
            # set_num_threads also sets the default that threads started later inherit: restore it once
            # every worker has fixed its own budget (the caller's own OpenMP count is per thread anyway)
            for ready in state["ready"]:
                while not ready.wait(_POLL_S) and not state["stop"].is_set():
                    pass
            torch.set_num_threads(caller_threads)
            while True:
                item = _get(state, state["out"], worker=False)
                if item is _END:
                    break
                yield (state["fed"].popleft(), item) if with_batch else item
        except _Stopped:
            pass
        finally:
            self._shutdown(state)
        self._raise_if_failed(state)

    def _shutdown(self, state: dict) -> None:
        state["stop"].set()
        deadline = time.monotonic() + self.join_timeout_s
        for t in state["threads"]:
            if t is threading.current_thread() or not t.ident:
                continue
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline thread %s did not end within %.0fs", t.name, self.join_timeout_s)
        if self._active is state:
            self._active = None

    def _raise_if_failed(self, state: dict) -> None:
        if state["error"] is not None:
            stage, exc = state["error"]
            raise PipelineError(stage, self.devices[stage] if stage >= 0 else None, exc) from exc

    def _feed(self, state: dict, batches: Iterable[dict], limit: int | None) -> None:
        try:
            # islice stops before pulling batch limit+1, so a shared iterator can be run in chunks
            for index, batch in enumerate(itertools.islice(batches, limit)):
                if state["with_batch"]:
                    state["fed"].append(batch)
                carry = Carry(batch["input_ids"], batch["attention_mask"].bool())
                carry, labels, event = _handoff(carry, batch["labels"], self.devices[0])
                _put(state, state["queues"][0], _Item(index, carry, labels, [], event))
            _put(state, state["queues"][0], _END)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            _fail(state, -1, exc)

    def _work(self, state: dict, w: int) -> None:
        current = [self.workers[w][0]]  # the stage being run, to name it on failure
        try:
            device, stream = self.devices[current[0]], self.streams[w]
            _set_threads(self.threads[w])
            state["ready"][w].set()
            if stream is not None:
                torch.cuda.set_device(device)
                with torch.cuda.stream(stream):
                    self._loop(state, w, current)
            else:
                self._loop(state, w, current)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            _fail(state, current[0], exc)
        finally:
            state["ready"][w].set()

    def _loop(self, state: dict, w: int, current: list[int]) -> None:
        """Worker w: per batch, each of its stages in turn does forward -> local loss -> hand the detached
        carry on (to the next worker through its queue, or straight to its own next stage) -> update."""
        stages = self.workers[w]
        last_worker = w == len(self.workers) - 1
        inbox = state["queues"][w]
        outbox = state["out"] if last_worker else state["queues"][w + 1]
        with torch.enable_grad():
            while True:
                item = _get(state, inbox, worker=True)
                if item is _END:
                    _put(state, outbox, _END)
                    return
                _receive(item.event, self.streams[w], _tensors(item.carry, item.labels))
                index, carry, labels, values = item.index, item.carry, item.labels, item.values
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
                    values = values + [value if finite else math.nan]
                    if k < len(self.stages) - 1:  # hand on first, so the next stage starts while this one updates
                        nxt = out.carry.detach() if self.decoupled else out.carry
                        if k == stages[-1]:
                            nxt, nxt_labels, event = _handoff(nxt, labels, self.devices[k + 1])
                            _put(state, outbox, _Item(index, nxt, nxt_labels, values, event))
                        else:  # the worker's own next stage, on the same device
                            carry = nxt
                    del out
                    if finite:
                        self.update(k, loss)
                    del loss
                if last_worker:
                    _put(state, outbox, values)


# ---------------------------------------------------------------------------------------------- GPipe BP
class GPipeBP:
    """GPipe-style pipelined backpropagation for ``bp`` (one stage holding every layer group).

    The stage's groups are cut into ``len(devices)`` contiguous partitions (balanced by group count;
    the head sits with the last one), one worker thread per partition. A batch is split into
    ``micro_batches`` chunks that flow through the partitions like a pipeline (partition p works on
    micro-batch m+1 while p+1 works on m); the carry is handed on *with* its graph (no detach). As each
    micro-batch's loss is ready, the last worker backpropagates ``loss_m * n_m / n`` through every
    partition, so the gradients accumulate to those of the whole batch. The caller then steps once.

    ``forward_backward(batch) -> float`` returns the batch loss (the size-weighted mean of the
    micro-batch losses; ``nan`` if non-finite: then skip the step and zero the gradients). Equal to
    non-pipelined BP up to float rounding, for losses that are means over examples (bp's
    cross-entropy; not batch-level losses such as SupCon) and without dropout (micro-batches draw
    other random masks). Trainer use::

        gpipe = GPipeBP(model.stages[0], devices, micro_batches=4, backward=accelerator.backward)
        value = gpipe.forward_backward(batch)
        if math.isfinite(value): unscale, clip, optimizer.step(), scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    On the CPU the backward of each micro-batch runs in the last worker's thread over every partition
    (it overlaps with the forwards of later micro-batches only); on CUDA the autograd engine runs each
    partition's backward on its device, on the stream its forward used."""

    def __init__(self, stage: nn.Module, devices: Sequence[torch.device | str], micro_batches: int = 4,
                 backward: Callable[[Tensor], None] | None = None,
                 threads_per_partition: int | Sequence[int | None] | None = None,
                 context: Callable[[], ContextManager] | None = None, queue_size: int = 2,
                 join_timeout_s: float = 60.0):
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
        self.context = context or contextlib.nullcontext
        self.queue_size = queue_size
        self.join_timeout_s = join_timeout_s
        self.streams = [torch.cuda.Stream(device=d) if d.type == "cuda" else None for d in devices]

    def forward_backward(self, batch: dict) -> float:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
        total = labels.shape[0]
        chunks = [c for c in zip(ids.tensor_split(self.micro_batches), mask.tensor_split(self.micro_batches),
                                 labels.tensor_split(self.micro_batches)) if c[2].shape[0] > 0]
        n = len(self.partitions)
        state = {"stop": threading.Event(), "error": None, "lock": threading.Lock(), "value": 0.0,
                 "queues": [queue.Queue(self.queue_size) for _ in range(n)]}
        caller_threads = torch.get_num_threads()
        threads = [threading.Thread(target=self._work, args=(state, p, len(chunks), total),
                                    name=f"pipeline-gpipe{p}", daemon=True) for p in range(n)]
        for t in threads:
            t.start()
        try:
            for c_ids, c_mask, c_labels in chunks:
                carry, c_labels, event = _handoff(Carry(c_ids, c_mask), c_labels, self.devices[0])
                _put(state, state["queues"][0], _Item(0, carry, c_labels, [], event))
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001
            _fail(state, -1, exc)
        deadline = time.monotonic() + self.join_timeout_s
        for t in threads:  # a failure stops the others within _POLL_S (see _fail)
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                state["stop"].set()
                t.join(self.join_timeout_s)
        torch.set_num_threads(caller_threads)
        if state["error"] is not None:
            stage, exc = state["error"]
            raise PipelineError(stage, self.devices[stage] if stage >= 0 else None, exc) from exc
        return state["value"]

    def _work(self, state: dict, p: int, count: int, total: int) -> None:
        try:
            _set_threads(self.threads[p])
            stream = self.streams[p]
            if stream is not None:
                torch.cuda.set_device(self.devices[p])
            with (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()), torch.enable_grad():
                last = p == len(self.partitions) - 1
                for _ in range(count):
                    item = _get(state, state["queues"][p], worker=True)
                    _receive(item.event, stream, _tensors(item.carry, item.labels))
                    with self.context():
                        carry = item.carry
                        for group in self.partitions[p]:
                            carry = group(carry)
                        if last:
                            out = self.stage.head(self.partitions[p][-1].pool(carry), item.labels)
                    if not last:
                        carry, labels, event = _handoff(carry, item.labels, self.devices[p + 1])
                        _put(state, state["queues"][p + 1], _Item(0, carry, labels, [], event))
                        continue
                    loss = out.loss * (item.labels.shape[0] / total)
                    value = float(loss.detach())
                    state["value"] += value
                    if math.isfinite(value):
                        self.backward(loss)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            _fail(state, p, exc)
