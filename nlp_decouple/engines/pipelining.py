"""BP pipelined over processes on ``torch.distributed.pipelining`` (``train.pipeline=torch_gpipe`` or
``torch_1f1b``): bp's one stage cut into contiguous blocks of layer groups, one block per rank, each batch
split into micro-batches; equal to BP in one process up to float rounding. :class:`TorchPipeline` (the
engine), :class:`SplitState` (its checkpoint part). Design: docs/architecture.md, "Engines".
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from ..errors import UserError
from ..models import Carry
from .base import Engine
from .processes import _cpu, _peer_error, stage_owners

SCHEDULES = {"torch_gpipe": ScheduleGPipe, "torch_1f1b": Schedule1F1B}


class Partition(nn.Module):
    """Rank r's block of bp's layer groups as a pipelining submodule: the carry's tensors in, out (the last
    block: the micro-batch's loss). ``wire``: (rows, tokens) every carry is padded to between ranks;
    ``context`` (e.g. autocast) is entered around each forward."""

    def __init__(self, groups: Sequence[nn.Module], head: nn.Module | None, first: bool, wire: tuple[int, int],
                 context: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.groups, self.head, self.first, self.wire = nn.ModuleList(groups), head, first, wire
        self.context = context

    def forward(self, *received: Tensor, mask: Tensor, labels: Tensor | None = None):
        with self.context():
            return self._forward(received, mask, labels)

    def _forward(self, received: tuple[Tensor, ...], mask: Tensor, labels: Tensor | None):
        rows, length = mask.shape  # this micro-batch's own
        if self.first:
            carry = Carry(received[0], mask)
        else:
            state = (received[1][:, :rows], received[2][:, :rows]) if len(received) == 3 else None
            carry = Carry(received[0][:rows, :length], mask, state)
        for group in self.groups:
            carry = group(carry)
        if self.head is not None:
            return self.head(self.groups[-1].pool(carry), labels).loss
        if carry.extras:
            raise ValueError("a bp carry holds no extras")
        out = [F.pad(carry.hidden, (0, 0, 0, self.wire[1] - length, 0, self.wire[0] - rows))]
        if carry.state is not None:  # an LSTM's final (h, c), each (2, rows, h)
            out += [F.pad(s, (0, 0, 0, self.wire[0] - rows)) for s in carry.state]
        return tuple(out)


class TorchPipeline(Engine):
    """This rank's part of bp on a ``torch.distributed.pipelining`` schedule (see the module doc).

    ``stage``: bp's one stage; ``owners``: each of its groups' rank; ``schedule``: a key of :data:`SCHEDULES`;
    ``step(finite)``: clip, step (or skip) and zero this rank's optimizer; ``seed(step)`` before each batch;
    ``context``: see :class:`Partition`."""

    chunk = 64

    def __init__(self, stage: nn.Module, owners: Sequence[int], schedule: str, micro_batches: int,
                 wire: tuple[int, int], device: torch.device, step: Callable[[bool], None],
                 seed: Callable[[int], None], context: Callable[[], ContextManager] = contextlib.nullcontext):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.last = self.rank == self.world - 1
        groups = list(stage.groups)
        mine = [g for g, r in zip(groups, owners) if r == self.rank]
        self.partition = Partition(mine, stage.head if self.last else None, self.rank == 0, wire, context)
        self.owned = [*zip(groups, owners), (stage.head, self.world - 1)]  # (module, its rank)
        self.schedule, self.micro_batches = schedule, micro_batches
        self.device, self.step, self.seed = torch.device(device), step, seed
        # NCCL sends from the GPU; gloo from the CPU
        self.transport = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.schedules: dict[int, object] = {}
        self.total = 1  # rows of the batch in flight (the loss scale's denominator)

    def _schedule(self, n: int):
        """The schedule for ``n`` micro-batches, each with its own stage (its buffers are sized per count)."""
        if n not in self.schedules:
            stage = PipelineStage(self.partition, self.rank, self.world, self.device)
            kind = SCHEDULES[self.schedule] if n >= self.world else ScheduleGPipe
            self.schedules[n] = kind(stage, n, loss_fn=self._scaled, scale_grads=False)
        return self.schedules[n]

    def _scaled(self, loss: Tensor, labels: Tensor) -> Tensor:
        return loss * (labels.shape[0] / self.total)

    def run(self, batches: Iterable[dict], limit: int | None = None, first_step: int = 0
            ) -> Iterator[tuple[dict, list[float]]]:
        for i, batch in enumerate(itertools.islice(batches, limit)):
            self.seed(first_step + i)
            yield batch, [self._train(batch)]

    def _train(self, batch: dict) -> float:
        mask, labels = batch["attention_mask"].to(self.device).bool(), batch["labels"].to(self.device)
        self.total = labels.shape[0]
        schedule = self._schedule(min(self.micro_batches, self.total))
        losses: list[Tensor] = []
        with peer_guard("a pipelined bp step"), torch.enable_grad():
            if self.rank == 0:
                schedule.step(batch["input_ids"].to(self.device), mask=mask, return_outputs=False)
            elif self.last:
                schedule.step(mask=mask, labels=labels, target=labels, losses=losses, return_outputs=False)
            else:
                schedule.step(mask=mask, return_outputs=False)
            value = torch.stack(losses).sum().detach().double().reshape(1).to(self.transport) if self.last else \
                torch.zeros(1, dtype=torch.float64, device=self.transport)
            dist.broadcast(value, self.world - 1)  # the batch loss: every rank steps or skips alike
        loss = float(value)
        self.step(math.isfinite(loss))
        return loss

    def gather_weights(self) -> None:
        """Every group's and the head's parameters and buffers from its owner to every rank."""
        for module, owner in self.owned:
            for t in itertools.chain(module.parameters(), module.buffers()):
                buf = t.detach().to(self.transport).contiguous()
                with peer_guard("sharing the weights"):
                    dist.broadcast(buf, owner)
                if self.rank != owner:
                    with torch.no_grad():
                        t.copy_(buf.to(t.dtype))


@contextlib.contextmanager
def peer_guard(what: str) -> Iterator[None]:
    """A failed wait on another rank (a gloo or distributed error: that rank crashed or hangs past the process
    group's deadline) ends this rank with one line naming ``what``; any other error passes unchanged."""
    try:
        yield
    except RuntimeError as err:
        if not (isinstance(err, dist.DistError) or "gloo" in str(err).lower()):
            raise
        raise _peer_error(err, what) from None


class SplitState:
    """The training state of bp split over ranks as one checkpoint object (registered with
    ``Accelerator.register_for_checkpointing``): ``state_dict`` (a collective) gathers each rank's groups and
    its parameters' optimizer states (the one optimizer's state is split as the parameters are); the
    schedule is the same on every rank. ``load_state_dict`` gives every rank the weights and its own
    parameters' optimizer states."""

    def __init__(self, engine: TorchPipeline, optimizer: torch.optim.Optimizer, scheduler):
        self.engine, self.optimizer, self.scheduler = engine, optimizer, scheduler
        owned = {id(p) for module, rank in engine.owned if rank == engine.rank for p in module.parameters()}
        every = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's numbering
        self.mine = {i for i, p in enumerate(every) if id(p) in owned}

    def state_dict(self) -> dict:
        e = self.engine
        modules = {i: module.state_dict() for i, (module, rank) in enumerate(e.owned) if rank == e.rank}
        opt = self.optimizer.state_dict()
        mine = {"modules": modules, "optimizer": {i: v for i, v in opt["state"].items() if i in self.mine}}
        everyone = [None] * e.world
        dist.all_gather_object(everyone, _cpu(mine))
        return {"modules": {i: sd for part in everyone for i, sd in part["modules"].items()},
                "optimizer": {"state": {i: v for part in everyone for i, v in part["optimizer"].items()},
                              "param_groups": opt["param_groups"]},
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for i, (module, _) in enumerate(self.engine.owned):
            module.load_state_dict(state["modules"][i])
        opt = state["optimizer"]
        self.optimizer.load_state_dict({"state": {i: v for i, v in opt["state"].items() if i in self.mine},
                                        "param_groups": opt["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])


def build_torch_pipeline(cfg, model, optimization, accelerator, seed: Callable[[int], None],
                         max_length: int) -> TorchPipeline:
    """This rank's engine for ``train.pipeline=torch_gpipe | torch_1f1b`` (``model``: bp's whole model on
    ``accelerator.device``; ``optimization``: its one optimizer, unprepared); registers its checkpoint state."""
    t = cfg.train
    world = dist.get_world_size() if dist.is_initialized() else 1
    stage = model.stages[0]
    if _carries_extras(stage):
        raise UserError(f"train.pipeline={t.pipeline}: this encoder's layers share a table besides the hidden states "
                        "(DeBERTa-v2's and MPNet's relative positions), which is not sent between ranks; train bp "
                        "with train.pipeline=false, or a decoupled method with train.pipeline=processes")
    if world < 2 or accelerator.num_processes != world:
        raise UserError(f"train.pipeline={t.pipeline} pipelines bp over the processes of a launch: start at least 2 "
                        "with torchrun --nproc_per_node N or accelerate launch --num_processes N (on a CPU machine "
                        "add train.cpu=true)")
    if world > len(stage.groups):
        raise UserError(f"train.pipeline={t.pipeline}: {world} processes for {len(stage.groups)} layer groups leaves "
                        f"a rank without one; launch at most {len(stage.groups)} processes or raise model.groups")
    if t.pipeline == "torch_1f1b" and t.micro_batches < world:
        raise UserError(f"train.pipeline=torch_1f1b needs train.micro_batches >= the {world} pipeline ranks "
                        f"(got {t.micro_batches})")
    if t.threads_per_stage:  # this process's intra-op threads (torchrun's default is 1)
        torch.set_num_threads(t.threads_per_stage)
    owners = stage_owners(len(stage.groups), world)
    o = optimization
    optimizer, scheduler = o.optimizers[0], o.schedulers[0]

    def step(finite: bool) -> None:
        if finite:
            if o.grad_clip is not None:
                clip_over_ranks([p for p in o.stage_params[0][0] if p.grad is not None], o.grad_clip, engine.transport)
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    wire = (math.ceil(t.batch_size / t.micro_batches), max_length)
    engine = TorchPipeline(stage, owners, t.pipeline, t.micro_batches, wire, accelerator.device, step, seed,
                           accelerator.autocast)
    accelerator.register_for_checkpointing(SplitState(engine, optimizer, scheduler))
    return engine


def _carries_extras(stage: nn.Module) -> bool:
    """Whether bp's groups hand each other tensors besides the hidden states and an LSTM's state, seen by
    running the first group on one text of 2 tokens (the generators' state is left as it was)."""
    first = stage.groups[0]
    device = next(first.parameters()).device
    with torch.no_grad(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device],
                                                device_type="cuda" if device.type == "cpu" else device.type):
        carry = first(Carry(torch.ones(1, 2, dtype=torch.long, device=device),
                            torch.ones(1, 2, dtype=torch.bool, device=device)))
    return bool(carry.extras)


def clip_over_ranks(params: list[nn.Parameter], max_norm: float, transport: torch.device) -> None:
    """Clip the gradients of every rank's ``params`` together, by their norm over all ranks (bp's one
    gradient, split as its parameters are)."""
    squares = torch.zeros(1, dtype=torch.float64, device=transport)
    if params:
        squares += torch.nn.utils.get_total_norm([p.grad for p in params]).double().to(transport) ** 2
    dist.all_reduce(squares)
    if params:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, squares.sqrt().float()[0].to(params[0].grad.device))
