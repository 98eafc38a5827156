"""Run by tests/engines/test_pipelining.py in a fresh interpreter: bp on torch.distributed.pipelining
(``train.pipeline=torch_gpipe | torch_1f1b``) over 2 gloo processes against sequential bp in one process.

    python tests/engines/_pipelining_check.py OUT_DIR

Every case trains one epoch of 16-row batches (the last one of 2 rows: fewer rows than micro-batches)
through the trainer under ``accelerate.debug_launcher``; the sequential references run afterwards in this
parent (no torch work before the fork, as in _process_check.py). A case's weights must equal the whole-batch
reference's within float rounding: the micro-batch losses are scaled to sum to the batch mean. Also: the
checkpoint of a pipelined run, loaded by a fresh trainer, gives every rank the same weights and its own
parameters' optimizer states; 1F1B with fewer micro-batches than ranks, and more ranks than layer groups,
are refused with one line. Prints ``ok`` when every check holds.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.trainer import (
    Trainer,  # imported before the fork: each child would spend ~15 s on it
)

BASE = ["train.progress=false", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
        "model.num_layers=3", "model.groups=3", "model.dropout=0", "data.synthetic_train_size=38",
        "data.synthetic_test_size=20", "train.batch_size=16", "train.epochs=1", "eval.every_group=false",
        "train.cpu=true", "method.name=bp"]
# (schedule, encoder, micro-batches, extra): uneven splits (16 rows in 3), global clipping, both encoders
CASES = [("torch_gpipe", "lstm", 4, ()), ("torch_1f1b", "lstm", 3, ("train.grad_clip=0.05",)),
         ("torch_gpipe", "transformer", 3, ()), ("torch_1f1b", "transformer", 4, ())]


def fit(out: Path, name: str, *extra: str) -> tuple[Trainer, dict]:
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", f"run_name={name}", *extra]))
    results = trainer.fit()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return trainer, {"weights": weights, "steps": results["steps"], "losses": trainer_losses(trainer)}


def trainer_losses(trainer: Trainer) -> list[float]:
    """Each epoch's mean training loss, as metrics.jsonl records it."""
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"][0] for line in lines]


def pipelines(out: Path) -> None:
    import torch.distributed as dist

    for schedule, encoder, micro, extra in CASES:
        name = f"{schedule}-{encoder}"
        trainer, got = fit(out, name, f"model.encoder={encoder}", f"train.pipeline={schedule}",
                           f"train.micro_batches={micro}", *extra)
        assert type(trainer.engine).__name__ == "TorchPipeline" and trainer.engine.world == dist.get_world_size() == 2
        used = {type(s).__name__ for s in trainer.engine.schedules.values()}  # 16-row and 2-row batches
        assert used == {"ScheduleGPipe" if schedule == "torch_gpipe" else "Schedule1F1B"}, used
        if dist.get_rank() == 0:
            torch.save(got, out / f"{name}.pt")
    refused(out)
    # the last case's checkpoint (epoch end), loaded by a fresh trainer of the same run
    schedule, encoder, micro, extra = CASES[-1]
    name = f"{schedule}-{encoder}"
    resumed = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", f"run_name={name}",
                                                              f"model.encoder={encoder}", f"train.pipeline={schedule}",
                                                              f"train.micro_batches={micro}", *extra,
                                                              "train.resume=auto"]))
    assert resumed.fit()["steps"] == got["steps"]  # nothing left to train: the checkpoint's end
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, got["weights"][key]), f"resumed weights: {key}"
    before, after = trainer.optimization.optimizers[0].state, resumed.optimization.optimizers[0].state
    params = [p for g in trainer.optimization.optimizers[0].param_groups for p in g["params"]]
    twins = [p for g in resumed.optimization.optimizers[0].param_groups for p in g["params"]]
    mine = [(p, q) for p, q in zip(params, twins) if p in before]
    assert mine and len(mine) == len(after), (len(mine), len(after))  # this rank's own parameters, only
    for p, q in mine:
        for k, v in before[p].items():
            assert torch.equal(v, after[q][k]), f"optimizer state {k}"


def refused(out: Path) -> None:
    """Layouts the launch cannot run end with one line on every rank, before any training."""
    from nlp_decouple.errors import UserError

    for extra, message in [(("train.pipeline=torch_1f1b", "train.micro_batches=1"),
                            "train.pipeline=torch_1f1b needs train.micro_batches >= the 2 pipeline ranks (got 1)"),
                           (("train.pipeline=torch_gpipe", "model.groups=1"),
                            "train.pipeline=torch_gpipe: 2 processes for 1 layer groups leaves a rank without one; "
                            "launch at most 1 processes or raise model.groups")]:
        try:
            Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", "run_name=refused", *extra]))
            raise AssertionError(f"{extra} was not refused")
        except UserError as err:
            assert str(err) == message, str(err)


def key_bias(key: str, value: torch.Tensor) -> torch.Tensor | None:
    """A self-attention in-projection bias's key third: its gradient is zero in exact arithmetic (softmax is
    invariant to a shift shared by every key), so AdamW turns the rounding noise left there into steps of
    size lr, in either engine; the other two thirds are compared as every other weight."""
    if key.endswith("self_attn.in_proj_bias"):
        third = value.shape[0] // 3
        return value[third: 2 * third]
    return None


def close(got: dict, ref: dict, what: str) -> None:
    assert got["steps"] == ref["steps"] == 3, (what, got["steps"], ref["steps"])
    torch.testing.assert_close(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6, msg=what)
    for key, value in ref["weights"].items():
        mine = got["weights"][key]
        if key_bias(key, value) is not None:
            value, mine = value.clone(), mine.clone()
            key_bias(key, value).zero_()
            key_bias(key, mine).zero_()
        torch.testing.assert_close(mine, value, rtol=1e-4, atol=1e-5, msg=f"{what}: {key}")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    debug_launcher(lambda: pipelines(out), num_processes=2)
    refs = {}
    for schedule, encoder, micro, extra in CASES:
        key = (encoder, extra)
        if key not in refs:
            refs[key] = fit(out, f"seq-{encoder}-{len(refs)}", f"model.encoder={encoder}", *extra)[1]
        close(torch.load(out / f"{schedule}-{encoder}.pt"), refs[key], f"{schedule}/{encoder}/{micro}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]))
    print("ok")
