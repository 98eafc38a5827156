"""Run by tests/engines/test_processes.py in a fresh interpreter: the process pipeline against references.

    python tests/engines/_process_check.py equal OUT_DIR      # every decoupled method x both encoders (and AL
                                                              # on a tiny pretrained BERT, SCPL on a DeBERTa-v3
                                                              # handing its relative tables on); a NaN
    python tests/engines/_process_check.py resume OUT_DIR     # SIGKILL of one rank, then train.resume=auto

Pipelines run under ``accelerate.debug_launcher`` (gloo, forked children); the sequential references run
afterwards in this parent, which must not run torch work before the fork (a fork of a running OpenMP pool
can deadlock); importing is fine. Prints ``ok`` when every comparison holds bit for bit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import debug_launcher

from nlp_decouple.config import load_config
from nlp_decouple.trainer import Trainer  # imported before the fork: each child would spend ~15 s on it

BASE = ["train.progress=false", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
        "model.num_layers=2", "model.dropout=0", "data.synthetic_train_size=200", "data.synthetic_test_size=40",
        "train.batch_size=16", "train.epochs=1", "train.max_steps=5", "eval.every_group=false", "train.cpu=true"]
HANDOFF = "model.lstm_state_handoff=true"
EXIT_ALL = ("method.exit_input=all_groups", "train.group_lr_scale=1,2,3")
CASES = [(m, e) for e in ("lstm", "transformer") for m in ("scpl", "early_exit", "deinforeg", "al")]


def fit(out: Path, name: str, *extra: str) -> dict:
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", f"run_name={name}", *extra]))
    results = trainer.fit()
    if "train.pipeline=processes" in extra:  # really a pipeline over every launched rank
        engine, world = trainer.engine, int(os.environ.get("WORLD_SIZE", "1"))
        assert type(engine).__name__ == "ProcessPipeline" and engine.world == world == len(set(engine.owners))
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return {"weights": weights, "steps": results["steps"], "test_accuracy": results["test_accuracy"]}


def pipelines(out: Path, cases: list[tuple[str, ...]], world: int) -> None:
    import torch.distributed as dist

    assert int(os.environ["WORLD_SIZE"]) == world
    if world == 2:
        nan_on_the_last_rank(out)
    for i, (method, encoder, *extra) in enumerate(cases):
        layout = ["train.stages_per_rank=[2,1]"] if i % 2 and world == 2 else []  # balanced and given layouts
        got = fit(out, f"pp-{method}-{encoder}", f"method.name={method}", f"model.encoder={encoder}",
                  "train.pipeline=processes", *layout, *extra)
        if dist.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(got, out / f"pp-{method}-{encoder}.pt")


def nan_on_the_last_rank(out: Path) -> None:
    """A NaN loss in the last rank's stage at step 2: every rank reports the same rows (that stage's value
    nan, the others finite), training goes on, no hang."""
    import torch.distributed as dist

    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", "run_name=nan",
                                                              "method.name=scpl", "train.pipeline=processes"]))
    head, forward, calls = trainer.model.stages[-1].head, trainer.model.stages[-1].head.forward, [0]

    def poisoned(pooled, labels):
        got = forward(pooled, labels)
        calls[0] += 1
        if calls[0] == 3:
            got.loss = got.loss * float("nan")
        return got
    head.forward = poisoned
    rows = torch.tensor([losses for _, losses in trainer.engine.run(iter(trainer.loaders.train), 4, 0)])
    everyone = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, rows)
    assert all(torch.equal(r.isnan(), everyone[0].isnan()) and torch.equal(r.nan_to_num(), everyone[0].nan_to_num())
               for r in everyone), everyone
    assert rows.isnan().nonzero().tolist() == [[2, len(trainer.model.stages) - 1]], rows


def same(a: dict, b: dict, what: str) -> None:
    assert a["steps"] == b["steps"] and a["test_accuracy"] == b["test_accuracy"], (what, a["steps"], b["steps"])
    for key in a["weights"]:
        if key.endswith((".norm.running_mean", ".norm.running_var")):  # a classifier's Standardizer: statistics
            # of features evaluated data parallel, in other batch shapes than in one process (float rounding)
            torch.testing.assert_close(a["weights"][key], b["weights"][key], rtol=1e-5, atol=1e-9, msg=what)
            continue
        assert torch.equal(a["weights"][key], b["weights"][key]), f"{what}: {key} differs"


TINY = {  # model_type -> its config beyond the shared sizes; DeBERTa-v3's hands its relative tables on
    "bert": "",
    "deberta-v2": ", relative_attention=True, pos_att_type=['p2c', 'c2p'], position_buckets=8, "
                  "max_relative_positions=40, norm_rel_ebd='layer_norm', share_att_key=True, position_biased_input=False",
}
SAVE_TINY = ("from transformers import AutoConfig, AutoModel; import torch, sys; torch.manual_seed(0); "
             "AutoModel.from_config(AutoConfig.for_model('{0}', vocab_size=120, max_position_embeddings=40, "
             "pad_token_id=0, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64{1}))"
             ".save_pretrained(sys.argv[1])")


def pretrained(out: Path, method: str, model_type: str, layers: str = "null") -> tuple[str, ...]:
    """A pretrained-encoder case: a tiny random Hub model saved by another process (no torch work here)."""
    path = out / f"tiny-{model_type}"
    if not path.is_dir():
        subprocess.run([sys.executable, "-c", SAVE_TINY.format(model_type, TINY[model_type]), str(path)], check=True)
    # a word vocabulary: WordPiece training is not repeatable across processes (its ties fall differently)
    return (method, "pretrained", f"model.pretrained={path}", f"model.num_layers={layers}", "tokenizer.train=word",
            "tokenizer.vocab_size=100")


def equal(out: Path) -> None:
    # every launch before any work here: a child forked after this process built an Accelerator would
    # inherit its one-process state
    # (the DeBERTa case runs the [2,1] layout: layer 1's rank hands the tables to layer 2's)
    cases = [*CASES, pretrained(out, "al", "bert"), pretrained(out, "scpl", "deberta-v2", layers="2")]
    debug_launcher(lambda: pipelines(out, cases, 2), num_processes=2)
    # a stage per rank; the LSTM's final (h, c) handed on with the hidden states, across both rank cuts
    # ... with SCPL's exit reading every group (their features handed on too) and a learning rate per group
    debug_launcher(lambda: pipelines(out / "three", [(*CASES[0], HANDOFF, *EXIT_ALL)], 3), num_processes=3)
    for method, encoder, *extra in cases:
        ref = fit(out, f"seq-{method}-{encoder}", f"method.name={method}", f"model.encoder={encoder}", *extra)
        same(torch.load(out / f"pp-{method}-{encoder}.pt"), ref, f"{method}/{encoder}")
    method, encoder = CASES[0]
    ref = fit(out, "seq-handoff", f"method.name={method}", f"model.encoder={encoder}", HANDOFF, *EXIT_ALL)
    same(torch.load(out / "three" / f"pp-{method}-{encoder}.pt"), ref, "3 ranks, LSTM state and exit features handed on")


def die_at_head_call(trainer: Trainer, call: int) -> None:
    """SIGKILL this process at the last stage head's ``call``-th labelled (training) forward."""
    head = trainer.model.stages[-1].head
    forward, calls = head.forward, [0]

    def dying(pooled, labels):
        calls[0] += labels is not None
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(pooled, labels)
    head.forward = dying


def save_weights(trainer: Trainer, path: Path) -> None:
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, path)


def resume_run(out: Path, kill_at: int | None) -> None:
    import torch.distributed as dist

    extra = ["method.name=scpl", "model.encoder=lstm", "train.pipeline=processes", "train.save_every=2",
             "model.dropout=0.2", "train.max_steps=7", "train.resume=auto"]
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", "run_name=killed", *extra]))
    if kill_at is not None and dist.get_rank() == 1:  # rank 1 dies mid-chunk after the step-4 checkpoint
        die_at_head_call(trainer, kill_at)
    trainer.fit()
    if dist.get_rank() == 0:
        save_weights(trainer, out / "resumed.pt")


def resume(out: Path) -> None:
    try:
        debug_launcher(lambda: resume_run(out, kill_at=6), num_processes=2)
        raise AssertionError("the killed run finished")
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001 - the launcher reports the killed child
        print(f"killed run ended: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    checkpoints = sorted(p.name for p in (out / "killed" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints[-1] == "step_00000004", checkpoints
    debug_launcher(lambda: resume_run(out, kill_at=None), num_processes=2)
    resumed = torch.load(out / "resumed.pt")
    # the reference: the same run uninterrupted, with dropout seeded per step and stage, in one process
    ref = fit(out, "whole", "method.name=scpl", "model.encoder=lstm", "train.pipeline=processes",
              "model.dropout=0.2", "train.max_steps=7")
    for key in ref["weights"]:
        assert torch.equal(resumed[key], ref["weights"][key]), f"resumed: {key} differs"


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    {"equal": equal, "resume": resume}[scenario](out)
    print("ok")
