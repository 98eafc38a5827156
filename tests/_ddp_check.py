"""Run by tests/test_distributed.py in a fresh interpreter: two CPU processes via accelerate.debug_launcher.

A fresh parent matters: debug_launcher forks, and a fork of a process whose OpenMP pool is already
running (any earlier torch work in the pytest process) can deadlock in the child."""
from __future__ import annotations

import sys
import tempfile

import torch
import torch.distributed as dist
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.metrics import collect

OVERRIDES = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2",
             "data.synthetic_train_size=300", "data.synthetic_test_size=61", "train.batch_size=16",
             "eval.probe_samples=50", "train.cpu=true", "train.num_processes=2", "train.epochs=1"]


def check_ranks_agree(method: str, backward: str, out_dir: str) -> None:
    from nlp_decouple.trainer import Trainer

    cfg = load_config("recipes/quickstart.yaml", [*OVERRIDES, f"method.name={method}",
                                                  f"method.backward={backward}", f"output_dir={out_dir}"])
    trainer = Trainer(cfg)
    assert trainer.accelerator.num_processes == 2
    batches = iter(trainer.loaders.train)
    for _ in range(4):
        batch = next(batches)
        trainer.engine.step(batch)
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), f"{method}: ranks diverged"
    labels = batch["labels"].contiguous()
    seen = [torch.empty_like(labels) for _ in range(2)]
    dist.all_gather(seen, labels)
    assert not torch.equal(seen[0], seen[1]), "both ranks got the same batch"  # else agreement proves nothing
    outs = collect(trainer.model, trainer.loaders.evals["test"], trainer.accelerator)
    assert len(outs.labels) == len(trainer.data.splits["test"]) == 61  # odd size: padding de-duplicated


if __name__ == "__main__":
    method, backward = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        debug_launcher(lambda: check_ranks_agree(method, backward, out), num_processes=2)
    print("ranks agree")
