"""The sequential engine's step: one fused AdamW over every stage updates the weights exactly as one AdamW
per stage stepped right after its own backward (the per-stage path), per-stage clipping included; and a
step never waits for the device (no host read), the trainer reading the losses once per chunk."""
from __future__ import annotations

import copy
import functools
import os
import sys

import pytest
import torch

from nlp_decouple.config import load_config
from nlp_decouple.optim import parameter_groups
from nlp_decouple.signals import StopSignal
from nlp_decouple.state import TrainState
from nlp_decouple.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4


def tiny(tmp_path, method: str, *extra: str) -> Trainer:
    return Trainer(load_config(None, [
        f"output_dir={tmp_path}", f"run_name={method}", "train.progress=false", "data.name=synthetic",
        "tokenizer.train=word", "tokenizer.vocab_size=200", "data.synthetic_train_size=300",
        "data.synthetic_test_size=40", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
        "model.num_layers=2", "model.dropout=0", "train.batch_size=16", "train.lr=5e-3", "train.seed=3",
        "train.weight_decay=0.01", "train.head_lr=1e-2", f"method.name={method}", *extra]))


def per_stage_path(model, batches: list[dict], t, summed: bool) -> dict[str, torch.Tensor]:
    """The reference: one AdamW per stage, each stage clipped and stepped as soon as its loss exists
    (``summed``: after one backward of the summed losses, as the engine's summed backward does). (The
    fused kernel, as the engine's: the multi-tensor one rounds differently, and Adam turns gradients that
    are pure rounding noise, such as that of an attention key bias, into full-size steps.)"""
    model = copy.deepcopy(model)
    optimizers = [torch.optim.AdamW(parameter_groups(stage, t), lr=t.lr, weight_decay=t.weight_decay, fused=True)
                  for stage in model.stages]
    def step(k: int) -> None:
        if t.grad_clip is not None:  # in the optimizer's order of parameters, as the per-stage path clipped
            torch.nn.utils.clip_grad_norm_([p for g in optimizers[k].param_groups for p in g["params"]], t.grad_clip)
        optimizers[k].step()
        optimizers[k].zero_grad(set_to_none=True)

    for batch in batches:
        outs = model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"])
        if summed:
            sum(out.loss for out in outs).backward()
        for k, out in enumerate(outs if not summed else model.stages):
            if not summed:
                out.loss.backward()
            step(k)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method, extra", [
    ("scpl", ("train.grad_clip=0.05", "method.projection=mlp")),  # a small clip: every stage is clipped
    ("scpl", ("method.backward=sum", "train.grad_clip=0.05")),
    ("bp", ("train.grad_clip=0.05",)),
    ("bp", ()),
])
def test_one_optimizer_equals_an_optimizer_per_stage(tmp_path, method, extra):
    trainer = tiny(tmp_path, method, *extra)
    batches = [b for _, b in zip(range(STEPS), trainer.loaders.train)]
    trainer.model.train()
    initial = copy.deepcopy(trainer.model)
    for batch in batches:
        assert not trainer.engine.step(batch).isnan().any()
    got = {n: p.detach() for n, p in trainer.model.named_parameters()}
    moved = [n for n, p in initial.named_parameters() if not torch.equal(p, got[n])]
    assert {n.split(".")[1] for n in moved} == {str(k) for k in range(len(trainer.model.stages))}
    same_kernel = per_stage_path(initial, batches, trainer.cfg.train, not trainer.engine.per_group)
    for name, value in got.items():  # the same fused kernel over other groupings: bit-identical
        assert torch.equal(value, same_kernel[name]), name


def test_a_step_without_clipping_differs_from_one_with_it(tmp_path):
    """The comparison above can fail: the clip changes the update."""
    clipped, plain = tiny(tmp_path, "scpl", "train.grad_clip=0.05"), tiny(tmp_path, "scpl")
    batch = next(iter(clipped.loaders.train))
    clipped.engine.step(batch)
    plain.engine.step(batch)
    assert not all(torch.equal(a, b) for a, b in zip(clipped.model.parameters(), plain.model.parameters()))


LOADER = os.path.dirname(torch.utils.data.__file__)
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostReads:
    """Counts reads of a tensor's value on the host (each one waits for the device on a GPU), by wrapping
    the Tensor methods that make them and ``torch.cuda.synchronize``. The data loader's sampler is left out:
    its index tensors are made on the host and never were on a device."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.cuda, "synchronize", self._counted(torch.cuda.synchronize))

    def _counted(self, fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            self.count += not caller.startswith(LOADER)
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize("backward", ["per_group", "sum"])
def test_a_step_reads_nothing_on_the_host(tmp_path, monkeypatch, backward):
    trainer = tiny(tmp_path, "scpl", "train.grad_clip=1.0", f"method.backward={backward}")
    batches = iter(trainer.loaders.train)
    trainer.engine.step(next(batches))  # the optimizer's state is created in the first step
    batch = next(batches)
    reads = HostReads(monkeypatch)
    trainer.engine.step(batch)
    assert reads.count == 0


def test_the_trainer_reads_the_losses_once_per_chunk(tmp_path, monkeypatch):
    trainer = tiny(tmp_path, "scpl", "train.grad_clip=1.0", "train.max_steps=12")
    trainer.engine.chunk = 4
    trainer.model.train()
    state = TrainState()
    reads = HostReads(monkeypatch)
    with StopSignal() as stop:
        trainer._train_epoch(state, stop)
    assert state.step == 12 and len(state.epoch_losses) == 12
    assert reads.count == 3  # one .tolist() of each chunk's losses
