"""Pipelined training of a decoupled method over processes (``train.pipeline=processes``): rank r of the
``torch.distributed`` world (gloo on CPU, NCCL on GPU; launched by ``accelerate launch`` or ``torchrun``)
owns a contiguous block of stages and trains only those. Unlike the thread pipeline, the stages share no
interpreter lock, and they may sit on other machines.

Per batch: every rank pulls the same batch from its own copy of the training loader (same shuffle), so
labels and sample counts need no message; rank 0 embeds the token ids; each rank runs its stages in turn
(forward -> local loss -> hand the *detached* carry on -> update) and sends the carry of its last stage to
rank r+1 with ``isend``: a fixed-size header first (names, dtypes, shapes: they change from batch to
batch), then the tensors. At most ``queue_size`` batches' sends are in flight per rank, which bounds how
far a rank runs ahead of the next. No gradient crosses a rank: that is the decoupled cut.

Values: a rank knows only its own stages' losses. At the end of a run (a chunk of batches) one
all-reduce gives every rank the full rows, and only then are ``(batch, values)`` yielded: every update
of the chunk is done on every rank by then (the all-reduce is the barrier), so the trainer checkpoints,
evaluates and agrees on stopping between runs exactly as with the other engines.

Equality: a decoupled stage's update depends only on its input stream, which is the same batches in the
same order as in the sequential engine (``method.backward=per_group``): with ``model.dropout=0`` the
weights are bit-identical. Dropout is seeded per (step, stage), so runs with dropout equal each other
whatever the number of ranks (not the sequential engine's draws, which are seeded per step).

Evaluation and saved models: every rank builds the whole model from the config but trains only its own
stages; :meth:`ProcessPipeline.gather_weights` broadcasts each stage's parameters and buffers from its
owner, after which evaluation runs data parallel as everywhere else. Checkpoints: :class:`PipelineState`
(registered with ``Accelerator.register_for_checkpointing``) gathers every rank's stage, optimizer and
scheduler states into the checkpoint and gives each rank its own back on load.

Failures: every wait (point-to-point, all-reduce, broadcast) has a deadline (``timeout_s``); a failed or
expired wait raises :class:`PipelinePeerError` naming the peer, so a crash of one rank ends all of them
with one line each instead of a hang.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import re
from datetime import timedelta
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import UserError
from ..methods.stages import ContrastiveHead
from ..models import Carry
from .base import Engine

HEADER_BYTES = 2048  # the per-batch header: a JSON list of (name, dtype, shape), zero-padded


class PipelinePeerError(UserError):
    """A wait on another pipeline rank failed or ran past its deadline (that rank crashed or hangs)."""


def stage_owners(num_stages: int, world: int, stages_per_rank: Sequence[int] | None = None) -> list[int]:
    """The rank of each stage: contiguous blocks, ``stages_per_rank[r]`` stages on rank r, or balanced
    (rank r gets stages ``r * n // world`` onwards) when not given."""
    if stages_per_rank is None:
        if world > num_stages:
            raise UserError(f"train.pipeline=processes: {world} processes for {num_stages} stages leaves a rank "
                            f"without a stage; launch at most {num_stages} processes (or cut the model into more "
                            "groups: model.groups)")
        return [r for r in range(world) for _ in range((r + 1) * num_stages // world - r * num_stages // world)]
    counts = list(stages_per_rank)
    if len(counts) != world:
        raise UserError(f"train.stages_per_rank lists {len(counts)} ranks but {world} processes were launched; "
                        f"launch {len(counts)} processes (data parallel x pipeline is not supported)")
    if sum(counts) != num_stages or min(counts) < 1:
        raise UserError(f"train.stages_per_rank={counts} must give every rank at least one stage and sum to the "
                        f"model's {num_stages} stages")
    return [r for r, n in enumerate(counts) for _ in range(n)]


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size (0 and 1 when no process group runs: a one-rank pipeline)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _wire(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as it travels: on the transport device, contiguous, bool as uint8 (not every backend sends bool)."""
    t = t.detach().to(device)
    return (t.to(torch.uint8) if t.dtype == torch.bool else t).contiguous()


class Link:
    """One-way point-to-point transport of carries between neighbouring ranks, with deadlines."""

    def __init__(self, device: torch.device, transport: torch.device, timeout_s: float, in_flight: int):
        self.device, self.transport = device, transport  # compute device, device the backend sends from
        self.timeout = timedelta(seconds=timeout_s)
        self.in_flight = in_flight
        self.pending: collections.deque = collections.deque()  # (works, tensors kept alive until sent)

    def wait(self, work, what: str) -> None:
        try:
            if work.wait(timeout=self.timeout) is False:
                raise RuntimeError(f"no answer within {self.timeout.total_seconds():.0f}s")
        except RuntimeError as err:  # also torch.distributed.DistBackendError
            reason = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or ["?"])[0])  # no source path
            reason = reason.split(". ")[0][:160]
            raise PipelinePeerError(f"pipeline rank {_rank_world()[0]}: {what} failed ({reason}); another rank has "
                                    "probably failed or hangs: see its log") from None

    def send(self, carry: Carry, dst: int) -> None:
        parts = [("hidden", carry.hidden), ("mask", carry.mask)]
        if carry.state is not None:
            parts += [("state0", carry.state[0]), ("state1", carry.state[1])]
        parts += [(f"extras.{k}", v) for k, v in carry.extras.items()]
        spec = json.dumps([(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in parts]).encode()
        if len(spec) > HEADER_BYTES:
            raise ValueError(f"pipeline header of {len(spec)} bytes exceeds {HEADER_BYTES}")
        header = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
        header[: len(spec)] = torch.frombuffer(bytearray(spec), dtype=torch.uint8)
        tensors = [header.to(self.transport)] + [_wire(t, self.transport) for _, t in parts]
        self.pending.append(([dist.isend(t, dst) for t in tensors], tensors))
        while len(self.pending) > self.in_flight:
            self._finish(dst)

    def _finish(self, dst: int) -> None:
        works, _ = self.pending.popleft()
        for work in works:
            self.wait(work, f"sending a carry to rank {dst}")

    def flush(self, dst: int) -> None:
        while self.pending:
            self._finish(dst)

    def receive(self, src: int) -> Carry:
        header = torch.zeros(HEADER_BYTES, dtype=torch.uint8, device=self.transport)
        self.wait(dist.irecv(header, src), f"receiving a carry from rank {src}")
        spec = json.loads(header.cpu().numpy().tobytes().rstrip(b"\0"))
        bufs = [torch.empty(shape, device=self.transport,
                            dtype=torch.uint8 if dtype == "bool" else getattr(torch, dtype)) for _, dtype, shape in spec]
        works = [dist.irecv(b, src) for b in bufs]
        for work in works:
            self.wait(work, f"receiving a carry from rank {src}")
        got = {name: (b.bool() if dtype == "bool" else b).to(self.device) for (name, dtype, _), b in zip(spec, bufs)}
        state = (got["state0"], got["state1"]) if "state0" in got else None
        extras = {name[len("extras."):]: t for name, t in got.items() if name.startswith("extras.")}
        return Carry(got["hidden"], got["mask"], state, extras)

    def collective(self, work, what: str) -> None:
        self.wait(work, what)


class ProcessPipeline(Engine):
    """This rank's part of a process pipeline: trains stages ``owners[k] == rank`` (see the module doc).

    ``update(k, loss)`` backpropagates stage k's local loss and steps its optimizer; ``seed(step, k)``
    seeds the generators before stage k's forward of that step; ``context`` (e.g. autocast) is entered
    around each forward."""

    chunk = 64

    def __init__(self, stages: Sequence[nn.Module], owners: Sequence[int], device: torch.device,
                 update: Callable[[int, Tensor], None], seed: Callable[[int, int], None], timeout_s: float = 300.0,
                 queue_size: int = 2, context: Callable[[], ContextManager] | None = None):
        self.stages, self.owners = list(stages), list(owners)
        self.rank, self.world = _rank_world()
        if len(self.owners) != len(self.stages) or sorted(set(self.owners)) != list(range(self.world)) \
                or self.owners != sorted(self.owners):
            raise ValueError(f"owners {self.owners}: every rank of {self.world} needs a contiguous block of stages")
        self.mine = [k for k, r in enumerate(self.owners) if r == self.rank]
        for module in (m for stage in self.stages for m in stage.modules()):
            if isinstance(module, ContrastiveHead):  # it pools over data-parallel ranks: a pipeline has none
                module.gather_features = False
        self.device = torch.device(device)
        # NCCL sends from the GPU; gloo (CPU, or several ranks sharing one GPU) from the CPU
        transport = self.device if self.world > 1 and dist.get_backend() == "nccl" else torch.device("cpu")
        self.link = Link(self.device, transport, timeout_s, queue_size)
        self.update, self.seed = update, seed
        self.context = context or contextlib.nullcontext

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, list[float]]]:
        kept, rows = [], []
        with torch.enable_grad():
            for i, batch in enumerate(itertools.islice(batches, limit)):  # the same batches on every rank
                kept.append(batch)
                rows.append(self._step(batch, first_step + i))
        if not kept:  # every rank's loader ended at the same batch
            return
        self.link.flush(self.rank + 1)
        table = torch.zeros(len(kept), len(self.stages), dtype=torch.float64)
        table[:, self.mine] = torch.tensor(rows, dtype=torch.float64)
        if self.world > 1:  # x + 0.0 == x (nan stays nan): a sum gives each rank every stage's exact value
            table = table.to(self.link.transport)
            self.link.collective(dist.all_reduce(table, async_op=True), "sharing the stage losses")
        for batch, values in zip(kept, table.cpu().tolist()):
            yield batch, values

    def _step(self, batch: dict, step: int) -> list[float]:
        labels = batch["labels"].to(self.device)
        if self.rank == 0:
            carry = Carry(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool())
        else:
            carry = self.link.receive(self.rank - 1)
        row = []
        for k in self.mine:
            self.seed(step, k)
            with self.context():
                out = self.stages[k](carry, labels)
            loss = out.loss
            if loss is None:
                raise RuntimeError(f"stage {k} returned no loss (a training pipeline needs a local loss in every stage)")
            value = float(loss.detach())
            finite = math.isfinite(value)
            row.append(value if finite else math.nan)
            carry = out.carry.detach()
            if k == self.mine[-1] and self.rank < self.world - 1:  # hand on first: rank r+1 starts sooner
                self.link.send(carry, self.rank + 1)
            del out
            if finite:
                self.update(k, loss)
            del loss
        return row

    def gather_weights(self) -> None:
        """Every stage's parameters and buffers from its owner to every rank (before evaluation/saving)."""
        if self.world == 1:
            return
        for k, stage in enumerate(self.stages):
            for t in itertools.chain(stage.parameters(), stage.buffers()):
                buf = _wire(t, self.link.transport)
                self.link.collective(dist.broadcast(buf, self.owners[k], async_op=True),
                                     f"sharing stage {k}'s weights")
                if self.rank != self.owners[k]:
                    with torch.no_grad():
                        t.copy_(buf.to(t.dtype))


def _cpu(obj):
    """A state dict with every tensor on the CPU (pickled across ranks, saved in one file)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class PipelineState:
    """The training state of a process pipeline as one checkpoint object: ``state_dict`` (a collective:
    every rank calls it inside ``save_state``) collects each rank's own stages, optimizers and schedulers;
    ``load_state_dict`` restores every stage's weights and this rank's optimizers and schedulers."""

    def __init__(self, stages: Sequence[nn.Module], owners: Sequence[int], optimizers: Sequence,
                 schedulers: Sequence, optimizer_of: dict[int, int]):
        self.stages, self.owners = list(stages), list(owners)
        self.optimizers, self.schedulers, self.optimizer_of = optimizers, schedulers, optimizer_of

    def _mine(self) -> tuple[list[int], list[int]]:
        rank = _rank_world()[0]
        stages = [k for k, r in enumerate(self.owners) if r == rank]
        return stages, sorted({self.optimizer_of[k] for k in stages if k in self.optimizer_of})

    def state_dict(self) -> dict:
        stages, opts = self._mine()
        mine = _cpu({"stages": {k: self.stages[k].state_dict() for k in stages},
                     "optimizers": {i: self.optimizers[i].state_dict() for i in opts},
                     "schedulers": {i: self.schedulers[i].state_dict() for i in opts}})
        everyone = [None] * _rank_world()[1]
        if len(everyone) > 1:
            dist.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        return {part: {k: v for rank in everyone for k, v in rank[part].items()}
                for part in ("stages", "optimizers", "schedulers")}

    def load_state_dict(self, state: dict) -> None:
        for k, stage in enumerate(self.stages):
            stage.load_state_dict(state["stages"][k])
        for i in self._mine()[1]:
            self.optimizers[i].load_state_dict(state["optimizers"][i])
            self.schedulers[i].load_state_dict(state["schedulers"][i])


def _seeder(seed: int) -> Callable[[int, int], None]:
    # dropout masks depend only on (seed, step, stage): the same whichever rank runs the stage, after a resume too
    return lambda step, k: torch.manual_seed(seed * 1_000_003 + step * 1009 + (k + 1) * 7919)


def build_process_pipeline(cfg, model, opt, accelerator) -> ProcessPipeline:
    """This rank's engine for ``train.pipeline=processes`` (``model``: the whole model, unwrapped, on
    ``accelerator.device``; ``opt``: per-stage optimizers, unprepared)."""
    t = cfg.train
    world = _rank_world()[1]
    if accelerator.num_processes != world:  # torchrun on a CPU machine without train.cpu: every rank a "main"
        raise UserError(f"train.pipeline=processes: {world} processes were launched but Accelerate counts "
                        f"{accelerator.num_processes}; on a CPU machine add train.cpu=true (or ACCELERATE_USE_CPU=1)")
    if t.threads_per_stage:  # this process's intra-op threads (torchrun's default is 1)
        torch.set_num_threads(t.threads_per_stage)
    owners = stage_owners(len(model.stages), world, t.stages_per_rank)
    def update(k: int, loss: Tensor) -> None:
        if k in opt.optimizer_of:  # a frozen stage has nothing to step
            opt.update(opt.optimizer_of[k], loss)

    engine = ProcessPipeline(model.stages, owners, accelerator.device, update, _seeder(t.seed), t.timeout_s,
                             t.queue_size, accelerator.autocast)
    accelerator.register_for_checkpointing(PipelineState(model.stages, owners, opt.optimizers, opt.schedulers,
                                                         opt.optimizer_of))
    return engine
