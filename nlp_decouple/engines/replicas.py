"""The 2-D layout (data parallel x pipeline) of the ranks of a ``train.pipeline=processes`` launch:
contiguous replicas of ``len(train.stages_per_rank)`` ranks, the stage groups (ranks holding the same stages)
and replica groups. Design: docs/architecture.md, "Engines".
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..config import TORCH_PIPELINES
from ..errors import UserError


def data_replicas(t, world: int) -> int:
    """Data-parallel replicas of a launch of ``world`` processes under train config ``t``: every process
    for data parallel training; world / pipeline ranks for ``train.pipeline=processes``; one for bp's
    pipelines over processes (``torch_gpipe``, ``torch_1f1b``)."""
    if t.pipeline in TORCH_PIPELINES:
        return 1
    if t.pipeline != "processes":
        return world
    if t.stages_per_rank is None:
        return 1
    pp = len(t.stages_per_rank)
    if world % pp:
        raise UserError(f"train.pipeline=processes: {world} launched processes (world size) do not split into "
                        f"pipelines of {pp} ranks (train.stages_per_rank={list(t.stages_per_rank)}); launch a "
                        f"multiple of {pp} processes "
                        f"(replicas x {pp}: e.g. {2 * pp} for 2 replicas) or give train.stages_per_rank "
                        f"{world} entries")
    return world // pp


@dataclass(frozen=True)
class Layout:
    """Where rank ``rank`` sits in a world of ``dp`` replicas of ``pp`` pipeline ranks (see the module doc)."""
    dp: int
    pp: int
    rank: int

    @property
    def replica(self) -> int:
        return self.rank // self.pp

    @property
    def position(self) -> int:
        return self.rank % self.pp

    def rank_of(self, replica: int, position: int) -> int:
        return replica * self.pp + position


Wait = Callable[[object, str], None]  # waits on an async collective with a deadline (Link.collective)


class ReplicaGroups:
    """The process groups of a layout with several replicas, and the collectives a stage group runs.
    ``new_group`` is a collective over the whole world: every rank creates every group, in the same order."""

    def __init__(self, layout: Layout, transport: torch.device, timeout_s: float, wait: Wait):
        self.layout, self.transport, self.wait = layout, transport, wait
        self.stage = self.replica = None  # None: the default group (and no stage group with one replica)
        if layout.dp == 1:
            return
        timeout = timedelta(seconds=timeout_s)
        for p in range(layout.pp):
            group = dist.new_group([layout.rank_of(d, p) for d in range(layout.dp)], timeout=timeout)
            if p == layout.position:
                self.stage = group
        for d in range(layout.dp):
            group = dist.new_group([layout.rank_of(d, p) for p in range(layout.pp)], timeout=timeout)
            if d == layout.replica:
                self.replica = group

    def gather_in_stage_group(self, stages: Iterable[nn.Module], head_type: type) -> None:
        """SupCon heads pool their features over the stage group (one replica: no gather at all)."""
        for module in (m for stage in stages for m in stage.modules()):
            if isinstance(module, head_type):
                if self.layout.dp == 1:
                    module.gather_features = False
                else:
                    module.gather_group = self.stage

    def agree(self, finite: bool) -> bool:
        """``finite`` AND-ed over the stage group."""
        if self.layout.dp == 1:
            return finite
        flag = torch.tensor([int(finite)], dtype=torch.int32, device=self.transport)
        self.wait(dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.stage, async_op=True),
                  "agreeing with the other replicas whether a loss is finite")
        return bool(flag.item())

    def average(self, params: Iterable[nn.Parameter], what: str) -> None:
        """Average the gradients of ``params`` over the stage group, in place. A parameter without a gradient
        has none on every member (same stages, same code path) and is left out."""
        if self.layout.dp == 1:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads]).to(self.transport)
            flat.mul_(1.0 / self.layout.dp)  # DDP's order: each gradient times 1/dp, then the sum
            self.wait(dist.all_reduce(flat, group=self.stage, async_op=True), what)
            offset = 0
            for g in grads:
                g.copy_(flat[offset: offset + g.numel()].view_as(g))
                offset += g.numel()
