"""Run by tests/test_distributed.py in a fresh interpreter: decisions two CPU processes must take alike.

    python tests/_ddp_agreement.py SCENARIO [SCENARIO ...] OUT_DIR
        SCENARIO: one-process-lr | schedule | nan-per_group | nan-sum | signal | early-stop

Each scenario but the first runs under ``accelerate.debug_launcher`` (2 processes, gloo), the first in one
forked process; each prints ``ok SCENARIO`` (or ``FAILED SCENARIO: why``). All run from this one
interpreter, which itself does no torch work (a fork of a running OpenMP pool can deadlock).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.trainer import Trainer  # imported before the forks: each rank would spend seconds on it

BASE = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2",
        "data.synthetic_train_size=300", "data.synthetic_test_size=61", "train.batch_size=16",
        "eval.probe_samples=50", "train.cpu=true", "model.dropout=0"]


def trainer_for(out: str, *extra: str):
    return Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", *extra]))


def lr_curve(out: str, steps: int) -> list[float]:
    trainer = trainer_for(out, "method.name=bp", "train.scheduler=linear", "train.warmup_ratio=0.25",
                          f"train.max_steps={steps}")
    curve = []
    for _ in trainer.engine.run(iter(trainer.loaders.train), steps, 0):
        curve.append(trainer.optimization.schedulers[0].get_last_lr()[0])
    return curve


def schedule(out: str) -> None:
    """The LR after each update equals a single process's (Accelerate's prepared scheduler would step
    twice per call), and an epoch-sized linear schedule ends at 0 exactly on the last update."""
    one = json.loads(Path(out, "one.json").read_text())
    assert dist.get_world_size() == 2
    assert lr_curve(f"{out}/two", 8) == one, "the 2-process LR curve differs from the 1-process one"
    trainer = trainer_for(f"{out}/epochs", "method.name=bp", "train.scheduler=linear", "train.warmup_ratio=0.2",
                          "train.epochs=2", "eval.every_group=false")
    per_epoch = len(trainer.loaders.train)  # batches per process after prepare
    used = []  # the learning rate of each update, read as the optimizer steps
    trainer.optimization.optimizers[0].optimizer.register_step_post_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    assert len(used) == 2 * per_epoch and used[-1] > 0.0, used
    assert trainer.optimization.schedulers[0].get_last_lr()[0] == 0.0  # reached exactly after the last update


def _weights(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


def _nan_on_rank1_at(trainer, stage: int, step_no: list[int], at: int) -> None:
    head = trainer.model.stages[stage].head
    forward = head.forward

    def poisoned(pooled, labels):
        out = forward(pooled, labels)
        if labels is not None and dist.get_rank() == 1 and step_no[0] == at:
            out.loss = out.loss * float("nan")
        return out

    head.forward = poisoned


def nan(out: str, backward: str) -> None:
    """A NaN loss on rank 1 only: both ranks skip the same update and stay bit-identical, no hang."""
    trainer = trainer_for(out, "method.name=scpl", f"method.backward={backward}")
    step_no = [0]
    _nan_on_rank1_at(trainer, 1, step_no, at=2)
    rows = []
    for _, values in trainer.engine.run(iter(trainer.loaders.train), 4, 0):
        rows.append(values)
        step_no[0] += 1
    flat = _weights(trainer)
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
    bad = [[k for k, v in enumerate(r) if not math.isfinite(v)] for r in rows]
    assert bad == [[], [], [1], []], bad  # the poisoned stage, on both ranks (sum: the whole step skipped)


def stop_signal(out: str) -> None:
    """SIGTERM to rank 1 only: both ranks save one checkpoint at the same step and stop; no hang. The stop is
    agreed at the end of the engine's chunk of steps: here 2, so a signal during step 3 stops both at 4."""
    trainer = trainer_for(out, "method.name=scpl", "train.epochs=2")
    trainer.engine.chunk = 2
    head = trainer.model.stages[0].head
    forward, calls = head.forward, [0]

    def signalling(pooled, labels):
        if labels is not None and trainer.model.training:
            calls[0] += 1
            if calls[0] == 3 and dist.get_rank() == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(pooled, labels)

    head.forward = signalling
    try:
        trainer.fit()
        raise AssertionError("training did not stop")
    except UserError as err:
        assert "stopped by" in str(err), err
    steps = torch.tensor([calls[0]])
    both = [torch.empty_like(steps) for _ in range(2)]
    dist.all_gather(both, steps)
    assert both[0].item() == both[1].item() == 4, both
    if dist.get_rank() == 0:
        saved = sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir())
        assert saved == ["step_00000004"], saved


def early_stop(out: str) -> None:
    """Early stopping decided alike: rank 0 sees validation plateau (a learning rate too small to move the
    weights), rank 1 alone is shown it improving; both stop after epoch 2, together (no hang)."""
    import nlp_decouple.trainer as trainer_module

    if dist.get_rank() == 1:
        evaluate, calls = trainer_module.evaluate, [0]

        def improving(*args, **kwargs):
            scores, outs = evaluate(*args, **kwargs)
            calls[0] += 1
            scores["validation"] = {**scores["validation"], "accuracy": calls[0] / 10}
            return scores, outs

        trainer_module.evaluate = improving
    trainer = trainer_for(out, "method.name=bp", "train.epochs=4", "train.early_stopping_patience=1",
                          "train.lr=1e-9", "train.timeout_s=60", "eval.every_group=false")
    epochs = torch.tensor([trainer.fit()["epochs_run"]])
    both = [torch.empty_like(epochs) for _ in range(2)]
    dist.all_gather(both, epochs)
    assert both[0].item() == both[1].item() == 2, both
    if dist.get_rank() == 0:
        assert json.loads((trainer.run_dir / "results.json").read_text())["stopped_early_at_epoch"] == 2


def one_process_lr(out: str) -> None:
    """The reference curve, in a process of its own (forked before this parent did any torch work)."""
    Path(out, "one.json").write_text(json.dumps(lr_curve(f"{out}/one", 8)))


def run(scenario: str, out: str) -> None:
    if scenario == "one-process-lr":
        import multiprocessing

        child = multiprocessing.get_context("fork").Process(target=one_process_lr, args=(out,))
        child.start()
        child.join()
        assert child.exitcode == 0, f"the one-process run exited with {child.exitcode}"
    elif scenario == "schedule":
        debug_launcher(lambda: schedule(out), num_processes=2)
    elif scenario.startswith("nan-"):
        debug_launcher(lambda: nan(out, scenario[4:]), num_processes=2)
    elif scenario == "signal":
        debug_launcher(lambda: stop_signal(out), num_processes=2)
    elif scenario == "early-stop":
        debug_launcher(lambda: early_stop(out), num_processes=2)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


def main() -> None:
    """Scenarios in the order given, each in its own folder OUT_DIR/SCENARIO (schedule reads
    one-process-lr's); a failing one is reported and the rest still run."""
    *scenarios, root = sys.argv[1:]
    for scenario in scenarios:
        out = Path(root, "schedule" if scenario in ("one-process-lr", "schedule") else scenario)
        out.mkdir(parents=True, exist_ok=True)
        try:
            run(scenario, str(out))
        except Exception as err:  # noqa: BLE001 - the launcher re-raises a rank's failure here
            print(f"FAILED {scenario}: {type(err).__name__}: {err}".replace("\n", "\n    "), flush=True)
        else:
            print(f"ok {scenario}", flush=True)


if __name__ == "__main__":
    main()
