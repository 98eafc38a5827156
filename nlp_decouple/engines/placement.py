"""Where stages run: one device per stage (``train.devices``), which stages share a worker thread, and
moving stages (and, through a forward pre-hook, their inputs) to their devices."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models import Carry

log = logging.getLogger("nlp_decouple")


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


def move(obj, device: torch.device):
    """A carry or tensor on ``device`` (anything else unchanged)."""
    non_blocking = device.type == "cuda"  # a non-blocking copy *to* the CPU could be read too early
    if isinstance(obj, (Carry, Tensor)):
        return obj.to(device, non_blocking=non_blocking)
    return obj


def place_stages(stages: Sequence[nn.Module], devices: Sequence[torch.device], move_inputs: bool = True) -> list:
    """Move stage k to ``devices[k]``; with ``move_inputs`` also install a forward pre-hook that moves
    the incoming carry and labels to that device, so sequential code that hands one stage's carry to the
    next (``iter_stages``, ``run``, ``collect``) works across devices. Returns the hook handles.

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
                return (tuple(move(a, device) for a in args), {k: move(v, device) for k, v in kwargs.items()})
            handles.append(stage.register_forward_pre_hook(hook, with_kwargs=True))
    return handles
