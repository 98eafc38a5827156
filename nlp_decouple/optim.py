"""Optimizers and learning-rate schedules for a model's stages.

A decoupled method with ``method.backward=per_group`` gets one optimizer per trainable stage (each steps as
soon as its own loss exists: what lets stages run as a pipeline); otherwise one optimizer holds a parameter
group per stage. Schedules are prepared by Accelerate, whose scheduler advances ``num_processes`` times per
update (one tick per process's batch): so they are sized in updates of this process times
``num_processes``, and the learning rate after each update is the same as in a single process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from transformers import get_scheduler

from .config import TrainConfig
from .errors import UserError


def parameter_groups(stage: nn.Module, t: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups for one stage (trainable parameters only), the fine-tuning
    conventions for every encoder: the encoder body (``stage.groups``) at ``train.lr`` and the heads (the
    rest: projections, classifiers, AL's label side) at ``train.head_lr``; weight decay on weight matrices
    and embeddings only, never on biases and normalisation weights (every parameter of fewer than 2 dims)."""
    body = {id(p) for p in stage.groups.parameters()} if hasattr(stage, "groups") else set()
    head_lr = t.lr if t.head_lr is None else t.head_lr
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in stage.parameters():
        if p.requires_grad:
            key = (t.lr if id(p) in body else head_lr, t.weight_decay if p.ndim >= 2 else 0.0)
            buckets.setdefault(key, []).append(p)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in buckets.items()]


@dataclass
class Optimization:
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler]
    optimizer_of: dict[int, int]  # stage index -> its optimizer (stages with nothing to train are absent)
    clip_sets: list[list[list[nn.Parameter]]]  # per optimizer: each stage's parameters, clipped separately
    grad_clip: float | None = None
    accelerator: Accelerator | None = None  # set by prepare()

    def prepare(self, accelerator: Accelerator) -> None:
        """Wrap optimizers and schedulers for mixed precision, gradient sync and ``save_state``."""
        self.optimizers = [accelerator.prepare(o) for o in self.optimizers]
        self.schedulers = [accelerator.prepare(s) for s in self.schedulers]
        self.accelerator = accelerator

    def update(self, index: int, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step optimizer ``index`` (clipping its parameters' gradients first)."""
        self.accelerator.backward(loss)
        self.finish(index)

    def finish(self, index: int, skip: bool = False) -> None:
        """Step optimizer ``index`` on the gradients it holds (``skip``: drop them instead)."""
        opt = self.optimizers[index]
        if not skip:
            self.accelerator.unscale_gradients(opt)
            if self.grad_clip is not None:  # per stage: a decoupled stage's gradient is its own
                for params in self.clip_sets[index]:
                    torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            opt.step()
            self.schedulers[index].step()  # prepared: it stays put when an fp16 overflow skipped the step
        opt.zero_grad(set_to_none=True)


def build_optimization(stages: list[nn.Module], t: TrainConfig, per_group: bool, updates_per_epoch: int,
                       num_processes: int = 1) -> Optimization:
    groups = [parameter_groups(stage, t) for stage in stages]
    trainable = [k for k, g in enumerate(groups) if g]  # e.g. a frozen embedding is not
    if not trainable:
        raise UserError("nothing to train: every parameter is frozen; set model.freeze_embeddings=false")
    # foreach: one multi-tensor kernel per step instead of a Python loop over parameters (on the CPU torch's
    # default is the loop); pipeline workers share the GIL, so per-op Python overhead counts
    make = lambda param_groups: torch.optim.AdamW(param_groups, lr=t.lr, weight_decay=t.weight_decay,  # noqa: E731
                                                  foreach=True)
    if per_group:
        optimizers = [make(groups[k]) for k in trainable]
        optimizer_of = {k: i for i, k in enumerate(trainable)}
    else:  # one optimizer (one loss-scaler update per step under fp16)
        optimizers = [make([g for k in trainable for g in groups[k]])]
        optimizer_of = {k: 0 for k in trainable}
    total = t.max_steps or updates_per_epoch * t.epochs
    # a warm-up needs a schedule that has one: "constant" becomes constant-after-warm-up
    name = "constant_with_warmup" if t.scheduler == "constant" and t.warmup_ratio > 0 else t.scheduler
    # in ticks of the prepared scheduler (num_processes per update): see the module docstring
    schedulers = [get_scheduler(name, opt, num_warmup_steps=math.floor(t.warmup_ratio * total) * num_processes,
                                num_training_steps=total * num_processes) for opt in optimizers]
    params = {k: [p for g in groups[k] for p in g["params"]] for k in trainable}
    clip_sets = [[params[k] for k in trainable if optimizer_of[k] == i] for i in range(len(optimizers))]
    return Optimization(optimizers, schedulers, optimizer_of, clip_sets, t.grad_clip)
