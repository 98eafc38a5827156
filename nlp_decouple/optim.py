"""Optimizers and learning-rate schedules for a model's stages.

The sequential engine steps one fused AdamW holding a parameter group per stage (each stage clipped on its
own, a stage with a non-finite loss skipped inside the kernel); the pipelines get one optimizer per
trainable stage, since each stage steps as soon as its own loss exists, in its own thread or process.
Schedules are prepared by Accelerate, whose scheduler advances ``num_processes`` times per update (one tick
per process's batch): so they are sized in updates of this process times ``num_processes``, and the
learning rate after each update is the same as in a single process.
"""
from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from transformers import get_scheduler

from .config import TrainConfig
from .errors import UserError


def parameter_groups(stage: nn.Module, t: TrainConfig, lr_scales: list[float] | None = None) -> list[dict]:
    """The optimizer's parameter groups for one stage (trainable parameters only), the fine-tuning
    conventions for every encoder: the encoder body (``stage.groups``) at ``train.lr`` and the heads (the
    rest: projections, classifiers, AL's label side) at ``train.head_lr``; weight decay on weight matrices
    and embeddings only, never on biases and normalisation weights (every parameter of fewer than 2 dims).
    ``lr_scales``: one factor per layer group of the stage (``train.group_lr_scale``); the heads take the
    factor of the stage's last group, the one they train."""
    groups = list(stage.groups) if hasattr(stage, "groups") else []
    scales = lr_scales or [1.0] * max(len(groups), 1)
    scale_of = {id(p): scales[k] for k, group in enumerate(groups) for p in group.parameters()}
    head_lr = (t.lr if t.head_lr is None else t.head_lr) * scales[-1]
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in stage.parameters():
        if p.requires_grad:
            key = (t.lr * scale_of[id(p)] if id(p) in scale_of else head_lr, t.weight_decay if p.ndim >= 2 else 0.0)
            buckets.setdefault(key, []).append(p)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in buckets.items()]


def stage_lr_scales(stages: list[nn.Module], t: TrainConfig) -> list[list[float] | None]:
    """``train.group_lr_scale`` cut into each stage's share (one factor per layer group of the model)."""
    if t.group_lr_scale is None:
        return [None] * len(stages)
    sizes = [len(stage.groups) if hasattr(stage, "groups") else 0 for stage in stages]
    if len(t.group_lr_scale) != sum(sizes):
        raise UserError(f"train.group_lr_scale has {len(t.group_lr_scale)} factors for a model of {sum(sizes)} "
                        f"layer groups: give one per group, e.g. train.group_lr_scale={','.join(['1'] * sum(sizes))}")
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [list(t.group_lr_scale[a:b]) or None for a, b in zip(bounds, bounds[1:])]


class StagedAdamW(torch.optim.AdamW):
    """Fused AdamW over the parameter groups of one or more stages (each group's ``"stage"``).

    ``step(skip=flags)`` leaves stage k untouched (weights, moments, step count) where ``flags[k]`` is set,
    without reading the flags on the host: each stage's groups are stepped with the fused kernel's
    ``found_inf``, the mechanism GradScaler uses to skip an overflowed step without a sync."""

    def __init__(self, param_groups: list[dict], **kwargs):
        super().__init__(param_groups, fused=True, **kwargs)

    def step(self, closure=None, skip: Tensor | None = None):
        if skip is None:
            return super().step(closure)
        plain_step = inspect.unwrap(torch.optim.AdamW.step)  # without the hooks this call already ran
        every_group = self.param_groups
        try:
            with torch.no_grad():
                for stage, groups in itertools.groupby(every_group, key=lambda g: g["stage"]):
                    self.param_groups, self.found_inf = list(groups), skip[stage].float()
                    plain_step(self)
        finally:
            self.param_groups = every_group
            self.__dict__.pop("found_inf", None)
        return None


@dataclass
class Optimization:
    """The optimizers of a model's stages with their schedules: one over every stage (the sequential engine),
    or one per trainable stage (the pipelines, where each stage steps in its own thread or process)."""
    optimizers: list[StagedAdamW]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler]
    optimizer_of: dict[int, int]  # stage index -> its optimizer (stages with nothing to train are absent)
    stage_params: list[list[list[nn.Parameter]]]  # per optimizer: each of its stages' parameters
    grad_clip: float | None = None
    accelerator: Accelerator | None = None  # set by prepare()

    def prepare(self, accelerator: Accelerator) -> None:
        """Wrap optimizers and schedulers for mixed precision, gradient sync and ``save_state``."""
        self.optimizers = [accelerator.prepare(o) for o in self.optimizers]
        self.schedulers = [accelerator.prepare(s) for s in self.schedulers]
        self.accelerator = accelerator

    def layout(self) -> str:
        """What a checkpoint's optimizer states must match, e.g. ``StagedAdamW over stages [0, 1, 2]``."""
        return "; ".join(f"StagedAdamW over stages {sorted(k for k, i in self.optimizer_of.items() if i == j)}"
                         for j in range(len(self.optimizers)))

    def clip_per_stage(self, index: int) -> None:
        """Unscale (fp16) and clip each stage's gradient on its own: a decoupled stage's gradient is its own.
        Nothing is read on the host (a non-finite norm makes that stage's gradient non-finite)."""
        self.accelerator.unscale_gradients(self.optimizers[index])
        if self.grad_clip is not None:
            for params in self.stage_params[index]:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)

    def backward_and_step(self, index: int, loss: Tensor) -> None:
        """A pipeline stage's whole update: backward, clip, step optimizer ``index``, its schedule, zero."""
        self.accelerator.backward(loss)
        self.step(index)

    def step(self, index: int) -> None:
        """Step optimizer ``index`` on the gradients it holds, then its schedule; drop the gradients."""
        self.clip_per_stage(index)
        self.optimizers[index].step()
        self.schedulers[index].step()  # prepared: it stays put when an fp16 overflow skipped the step
        self.optimizers[index].zero_grad(set_to_none=True)


def build_optimization(stages: list[nn.Module], t: TrainConfig, per_stage: bool, updates_per_epoch: int,
                       num_processes: int = 1) -> Optimization:
    """``per_stage``: one optimizer per trainable stage (the pipelines); otherwise one over every stage."""
    scales = stage_lr_scales(stages, t)
    groups = [[{**g, "stage": k} for g in parameter_groups(stage, t, scales[k])] for k, stage in enumerate(stages)]
    trainable = [k for k, g in enumerate(groups) if g]  # e.g. a frozen embedding is not
    if not trainable:
        raise UserError("nothing to train: every parameter is frozen; set model.freeze_embeddings=false")
    make = lambda param_groups: StagedAdamW(param_groups, lr=t.lr, weight_decay=t.weight_decay)  # noqa: E731
    if per_stage:
        optimizers = [make(groups[k]) for k in trainable]
        optimizer_of = {k: i for i, k in enumerate(trainable)}
    else:  # one optimizer (one loss-scaler update per step under fp16)
        optimizers = [make([g for k in trainable for g in groups[k]])]
        optimizer_of = {k: 0 for k in trainable}
    total = t.max_steps or updates_per_epoch * t.epochs
    # a warm-up needs a schedule that has one: "constant" becomes constant-after-warm-up
    name = "constant_with_warmup" if t.scheduler == "constant" and t.warmup_ratio > 0 else t.scheduler
    # in ticks of the prepared scheduler (num_processes per update): see the module docstring
    schedulers = [get_scheduler(name, o, num_warmup_steps=math.floor(t.warmup_ratio * total) * num_processes,
                                num_training_steps=total * num_processes) for o in optimizers]
    params = {k: [p for g in groups[k] for p in g["params"]] for k in trainable}
    stage_params = [[params[k] for k in trainable if optimizer_of[k] == i] for i in range(len(optimizers))]
    return Optimization(optimizers, schedulers, optimizer_of, stage_params, t.grad_clip)
