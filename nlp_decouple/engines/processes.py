"""Pipelined training of a decoupled method over processes (``train.pipeline=processes``): rank r of the
``torch.distributed`` world (gloo on CPU, NCCL on GPU; launched by ``accelerate launch`` or ``torchrun``)
owns a contiguous block of stages and trains only those. Unlike the thread pipeline, the stages share no
interpreter lock, and they may sit on other machines. Data parallel x pipeline: the world may hold several
replicas of the pipeline, each reading its own shard of the data, a stage's gradients averaged over the
ranks that hold it (:mod:`.replicas`: the layout, contiguous replicas of ``len(train.stages_per_rank)``
ranks). Below, "rank r" is pipeline position r of one replica; with one replica, rank r of the world.

Per batch: every rank of a replica pulls the same batch from its own copy of the replica's loader (same
shuffle), so labels and sample counts need no message; rank 0 embeds the token ids; each rank runs its
stages in turn (forward -> local loss -> hand the *detached* carry on -> update; with several replicas the
update averages the stage's gradients over them) and sends the carry of its last stage to
rank r+1 with ``isend``: a fixed-size header first (names, dtypes, shapes: they change from batch to
batch), then the tensors. At most ``queue_size`` batches' sends are in flight per rank, which bounds how
far a rank runs ahead of the next. No gradient crosses a rank: that is the decoupled cut.

Stage losses: a rank knows only its own stages'. At the end of a run (a chunk of batches) one all-reduce
over the replica gives each of its ranks the replica's full rows, and only then are ``(batch,
stage_losses)`` yielded: every update of the chunk is done on every rank by then (the all-reduce is the
barrier), so the trainer checkpoints, evaluates and agrees on stopping between runs exactly as with the other engines.

Equality: a decoupled stage's update depends only on its input stream, which is the same batches in the
same order as in the sequential engine (``method.backward=per_group``): with ``model.dropout=0`` the
weights are bit-identical (with dp replicas: to a dp-process data-parallel sequential run, same global
batch). Dropout is seeded per (step, stage, replica), so runs with dropout equal each other whatever the
number of ranks per replica (not the sequential engine's draws, which are seeded per step and process).

Evaluation and saved models: every rank builds the whole model from the config but trains only its own
stages; :meth:`ProcessPipeline.gather_weights` broadcasts each stage's parameters and buffers from its
owner in replica 0, after which evaluation runs data parallel over the world as everywhere else.
Checkpoints: :class:`PipelineState` (registered with ``Accelerator.register_for_checkpointing``) gathers
replica 0's stage, optimizer and scheduler states into the checkpoint (the other replicas hold identical
ones) and gives each rank its position's back on load.

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
from .replicas import Layout, ReplicaGroups, data_replicas

HEADER_BYTES = 2048  # the per-batch header: a JSON list of (name, dtype, shape), zero-padded


class PipelinePeerError(UserError):
    """A wait on another pipeline rank failed or ran past its deadline (that rank crashed or hangs)."""


def stage_owners(num_stages: int, world: int, stages_per_rank: Sequence[int] | None = None) -> list[int]:
    """The pipeline rank of each stage, ``world`` ranks per pipeline: contiguous blocks,
    ``stages_per_rank[r]`` stages on rank r, or balanced (rank r gets stages ``r * n // world`` onwards)."""
    if stages_per_rank is None:
        if world > num_stages:
            raise UserError(f"train.pipeline=processes: {world} processes for {num_stages} stages leaves a rank "
                            f"without a stage; launch at most {num_stages} processes (or cut the model into more "
                            "groups: model.groups), or give train.stages_per_rank for several pipeline replicas "
                            "(data parallel x pipeline)")
        return [r for r in range(world) for _ in range((r + 1) * num_stages // world - r * num_stages // world)]
    counts = list(stages_per_rank)
    if len(counts) != world:
        raise UserError(f"train.stages_per_rank lists {len(counts)} ranks but {world} processes make one pipeline "
                        f"replica; launch a multiple of {len(counts)} processes")
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


def _peer_error(err: Exception, what: str) -> PipelinePeerError:
    reason = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or ["?"])[0])  # no source path
    reason = reason.split(". ")[0][:160]
    return PipelinePeerError(f"pipeline rank {_rank_world()[0]}: {what} failed ({reason}); another rank has "
                             "probably failed or hangs: see its log")


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
            raise _peer_error(err, what) from None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Collectives made inside (SupCon's gather over the replicas, forward and backward) failing on a lost
        peer end with the same one line as a failed wait; any other error passes unchanged."""
        try:
            yield
        except RuntimeError as err:
            if not (isinstance(err, dist.DistError) or "gloo" in str(err).split("]")[0].lower()):
                raise
            raise _peer_error(err, what) from None

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
    """This rank's part of a process pipeline: trains stages ``owners[k] == position`` (see the module doc).

    ``owners``: each stage's pipeline rank (position within a replica); ``dp``: the replicas (the world
    is ``dp * len(set(owners))`` ranks). ``backward_and_step(k, loss)`` backpropagates stage k's local loss and
    steps its optimizer, calling ``sync(k)`` (:meth:`ReplicaGroups.average` of its parameters) between the
    two; ``seed(step, k)`` seeds the generators before stage k's forward of that step; ``context`` (e.g.
    autocast) is entered around each forward."""

    chunk = 64

    def __init__(self, stages: Sequence[nn.Module], owners: Sequence[int], device: torch.device,
                 backward_and_step: Callable[[int, Tensor], None], seed: Callable[[int, int], None], timeout_s: float = 300.0,
                 queue_size: int = 2, context: Callable[[], ContextManager] | None = None, dp: int = 1):
        self.stages, self.owners = list(stages), list(owners)
        self.rank, self.world = _rank_world()
        self.layout = Layout(dp, self.world // dp, self.rank)
        self.pp, self.position = self.layout.pp, self.layout.position
        if len(self.owners) != len(self.stages) or sorted(set(self.owners)) != list(range(self.pp)) \
                or self.owners != sorted(self.owners) or self.pp * dp != self.world:
            raise ValueError(f"owners {self.owners}: every rank of {self.pp} x {dp} replicas needs a contiguous "
                             "block of stages")
        self.mine = [k for k, r in enumerate(self.owners) if r == self.position]
        self.device = torch.device(device)
        # NCCL sends from the GPU; gloo (CPU, or several ranks sharing one GPU) from the CPU
        transport = self.device if self.world > 1 and dist.get_backend() == "nccl" else torch.device("cpu")
        self.link = Link(self.device, transport, timeout_s, queue_size)
        self.groups = ReplicaGroups(self.layout, transport, timeout_s, self.link.collective)
        self.groups.gather_in_stage_group(self.stages, ContrastiveHead)  # one replica: nothing to gather over
        self.backward_and_step, self.seed = backward_and_step, seed
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
        if self.pp > 1:  # x + 0.0 == x (nan stays nan): a sum gives each rank every stage's exact value
            table = table.to(self.link.transport)
            self.link.collective(dist.all_reduce(table, group=self.groups.replica, async_op=True),
                                 "sharing the stage losses")
        for batch, stage_losses in zip(kept, table.cpu().tolist()):
            yield batch, stage_losses

    def _step(self, batch: dict, step: int) -> list[float]:
        labels = batch["labels"].to(self.device)
        if self.position == 0:
            carry = Carry(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool())
        else:
            carry = self.link.receive(self.rank - 1)
        row = []
        for k in self.mine:
            self.seed(step, k)
            with self.link.guard(f"stage {k}'s forward"), self.context():
                out = self.stages[k](carry, labels)
            loss = out.loss
            if loss is None:
                raise RuntimeError(f"stage {k} returned no loss (a training pipeline needs a local loss in every stage)")
            value = float(loss.detach())
            finite = self.groups.agree(math.isfinite(value))  # over the replicas: all update or none
            row.append(value if finite else math.nan)
            carry = out.carry.detach()
            if k == self.mine[-1] and self.position < self.pp - 1:  # hand on first: rank r+1 starts sooner
                self.link.send(carry, self.rank + 1)
            del out
            if finite:
                with self.link.guard(f"stage {k}'s update"):
                    self.backward_and_step(k, loss)
            del loss
        return row

    def sync(self, k: int, params) -> None:
        """Average stage k's gradients over the replicas (nothing with one replica)."""
        self.groups.average(params, f"averaging stage {k}'s gradients over the replicas")

    def gather_weights(self) -> None:
        """Every stage's parameters and buffers from its owner in replica 0 (global rank = position) to every
        rank (before evaluation/saving)."""
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
    every rank calls it inside ``save_state``) collects the stages, optimizers and schedulers of each rank
    of replica 0 (the other replicas' copies are identical: their gradients are averaged);
    ``load_state_dict`` restores every stage's weights and this rank's optimizers and schedulers (those of
    its position, on every replica). ``owners``: each stage's position in a replica of ``pp`` ranks."""

    def __init__(self, stages: Sequence[nn.Module], owners: Sequence[int], optimizers: Sequence,
                 schedulers: Sequence, optimizer_of: dict[int, int], pp: int | None = None):
        self.stages, self.owners, self.pp = list(stages), list(owners), pp or len(set(owners))
        self.optimizers, self.schedulers, self.optimizer_of = optimizers, schedulers, optimizer_of

    def _mine(self) -> tuple[list[int], list[int]]:
        position = _rank_world()[0] % self.pp
        stages = [k for k, r in enumerate(self.owners) if r == position]
        return stages, sorted({self.optimizer_of[k] for k in stages if k in self.optimizer_of})

    def state_dict(self) -> dict:
        stages, opts = self._mine() if _rank_world()[0] < self.pp else ([], [])  # replica 0 alone
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


def _seeder(seed: int, replica: int = 0) -> Callable[[int, int], None]:
    # dropout masks depend only on (seed, step, stage, replica): the same whichever rank runs the stage, after a
    # resume too; each replica its own masks, as each data-parallel process draws its own
    return lambda step, k: torch.manual_seed(seed * 1_000_003 + step * 1009 + (k + 1) * 7919 + replica * 104_729)


def build_process_pipeline(cfg, model, optimization, accelerator) -> ProcessPipeline:
    """This rank's engine for ``train.pipeline=processes`` (``model``: the whole model, unwrapped, on
    ``accelerator.device``; ``optimization``: per-stage optimizers, unprepared)."""
    t = cfg.train
    world = _rank_world()[1]
    if accelerator.num_processes != world:  # torchrun on a CPU machine without train.cpu: every rank a "main"
        raise UserError(f"train.pipeline=processes: {world} processes were launched but Accelerate counts "
                        f"{accelerator.num_processes}; on a CPU machine add train.cpu=true (or ACCELERATE_USE_CPU=1)")
    if t.threads_per_stage:  # this process's intra-op threads (torchrun's default is 1)
        torch.set_num_threads(t.threads_per_stage)
    dp = data_replicas(t, world)  # world = dp replicas x pp pipeline ranks (see .replicas)
    owners = stage_owners(len(model.stages), world // dp, t.stages_per_rank)

    def backward_and_step(k: int, loss: Tensor) -> None:
        if k not in optimization.optimizer_of:  # a frozen stage has nothing to step
            return
        i = optimization.optimizer_of[k]
        accelerator.backward(loss)
        engine.sync(k, [p for group in optimization.optimizers[i].param_groups for p in group["params"]])
        optimization.step(i)

    engine = ProcessPipeline(model.stages, owners, accelerator.device, backward_and_step,
                             _seeder(t.seed, _rank_world()[0] // (world // dp)), t.timeout_s, t.queue_size,
                             accelerator.autocast, dp)
    accelerator.register_for_checkpointing(PipelineState(model.stages, owners, optimization.optimizers,
                                                         optimization.schedulers, optimization.optimizer_of,
                                                         world // dp))
    return engine
