"""Run by tests/test_distributed.py in a fresh interpreter: two CPU processes via accelerate.debug_launcher.

    python tests/_ddp_check.py bp:per_group scpl:sum ...   # prints "ranks agree: METHOD BACKWARD" per case

A fresh parent matters: debug_launcher forks, and a fork of a process whose OpenMP pool is already
running (any earlier torch work in the pytest process) can deadlock in the child."""
from __future__ import annotations

import sys
import tempfile

import torch
import torch.distributed as dist
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.metrics import collect, refresh_standardizers
from nlp_decouple.models import Standardizer
from nlp_decouple.trainer import Trainer  # imported before the forks: each rank would spend seconds on it

OVERRIDES = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2",
             "data.synthetic_train_size=300", "data.synthetic_test_size=61", "train.batch_size=16",
             "eval.probe_samples=50", "train.cpu=true", "train.num_processes=2", "train.epochs=1"]


def check_ranks_agree(method: str, backward: str, out_dir: str) -> None:
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
    rows = torch.tensor(trainer.probe.indices)  # each rank draws the probe set itself: the same rows on both
    drawn = [torch.empty_like(rows) for _ in range(2)]
    dist.all_gather(drawn, rows)
    assert torch.equal(drawn[0], drawn[1]) and len(rows) == 50, "the ranks drew different probe sets"
    if method == "scpl":  # the exit's standardizer: statistics of every probe text once, the same on both ranks
        refresh_standardizers(trainer.model, trainer.loaders.probe, trainer.accelerator)
        norm = next(m for m in trainer.model.modules() if isinstance(m, Standardizer))
        outs = collect(trainer.model, trainer.loaders.probe, trainer.accelerator, return_pooled=True)
        x = torch.from_numpy(outs.pooled[-1]).double()
        assert len(x) == 50
        labels = trainer.data.splits["train"]["label"]
        assert sorted(outs.labels.tolist()) == sorted(labels[i] for i in trainer.probe.indices)  # the drawn rows
        torch.testing.assert_close(norm.running_mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var.double(), x.var(0), rtol=1e-5, atol=1e-6)


def main(cases: list[tuple[str, str]]) -> None:
    """Every case in its own two-process launch, one after the other, from this one interpreter (the
    imports, most of a fresh interpreter's time, are paid once); a case that fails is reported and the
    next one still runs."""
    for method, backward in cases:
        try:
            with tempfile.TemporaryDirectory() as out:
                debug_launcher(lambda: check_ranks_agree(method, backward, out), num_processes=2)
        except Exception as err:  # noqa: BLE001 - the launcher re-raises a rank's failure here
            print(f"FAILED {method} {backward}: {type(err).__name__}: {err}".replace("\n", "\n    "), flush=True)
        else:
            print(f"ranks agree: {method} {backward}", flush=True)


if __name__ == "__main__":
    # python tests/_ddp_check.py METHOD:BACKWARD [METHOD:BACKWARD ...]
    main([tuple(arg.split(":")) for arg in sys.argv[1:]])
