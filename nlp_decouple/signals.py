"""Stop requests and the decisions every process must take alike.

Under several processes, a decision one rank takes alone (skip a non-finite update, stop on SIGTERM)
leaves the others waiting in a collective it never joins: such decisions are reduced over the ranks first.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist
from accelerate import Accelerator

from .errors import UserError


class StopRequested(UserError):
    """Training stopped on SIGTERM/SIGINT (to this or another process) after saving a checkpoint."""


class StopSignal:
    """SIGTERM/SIGINT set a flag; the trainer saves a checkpoint at the next quiescent boundary and exits."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name


def all_ranks(flags: list[bool], accelerator: Accelerator) -> list[bool]:
    """Each flag AND-ed over every process (one small all-reduce; nothing in a single process)."""
    if accelerator.num_processes == 1 or not dist.is_initialized():
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def agreed(flags: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """A bool tensor AND-ed over every process, left on the device: one all-reduce, nothing read on the host."""
    if accelerator.num_processes == 1 or not dist.is_initialized():
        return flags
    t = flags.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.bool()


def any_rank(flag: bool, accelerator: Accelerator) -> bool:
    """Whether ``flag`` is set on any process."""
    return not all_ranks([not flag], accelerator)[0]
