"""Two-process data parallel on CPU (accelerate.debug_launcher): every rank ends with the same weights,
for BP and every decoupled method, and evaluation gathers each example exactly once."""
from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.evaluation import collect
from nlp_decouple.methods import METHODS

OVERRIDES = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2",
             "data.synthetic_train_size=300", "data.synthetic_test_size=61", "train.batch_size=16",
             "eval.probe_samples=50", "train.cpu=true", "train.num_processes=2"]


def _check_ranks_agree(method: str, backward: str, out_dir: str) -> None:
    from accelerate.state import AcceleratorState

    from nlp_decouple.trainer import Trainer

    # a forked child inherits the parent's single-process Accelerate state (an earlier test made one)
    AcceleratorState._reset_state(reset_partial_state=True)

    cfg = load_config("recipes/quickstart.yaml", [*OVERRIDES, f"method.name={method}",
                                                  f"method.backward={backward}", f"output_dir={out_dir}"])
    trainer = Trainer(cfg)
    assert trainer.accelerator.num_processes == 2
    batches = iter(trainer.train_loader)
    for _ in range(4):
        batch = next(batches)
        trainer.train_step(batch)
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), f"{method}: ranks diverged"
    # and the data differed between ranks (otherwise agreement would prove nothing)
    labels = batch["labels"].contiguous()
    seen = [torch.empty_like(labels) for _ in range(2)]
    dist.all_gather(seen, labels)
    assert not torch.equal(seen[0], seen[1]), "both ranks got the same batch"
    outs = collect(trainer.model, trainer.eval_loaders["test"], trainer.accelerator)
    assert len(outs.labels) == len(trainer.data.splits["test"]) == 61  # odd size: padding de-duplicated


@pytest.mark.slow
@pytest.mark.parametrize("method,backward", [(m, "per_group") for m in METHODS] + [("scpl", "sum")])
def test_two_cpu_processes_stay_in_sync(method, backward):
    with tempfile.TemporaryDirectory() as out:
        debug_launcher(lambda: _check_ranks_agree(method, backward, out), num_processes=2)


def test_refuses_a_world_size_other_than_asked(tmp_path):
    from nlp_decouple.errors import UserError
    from nlp_decouple.trainer import Trainer

    cfg = load_config("recipes/quickstart.yaml", [*OVERRIDES, f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="train.num_processes=2 but 1 process"):
        Trainer(cfg)
