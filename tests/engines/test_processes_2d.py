"""train.pipeline=processes, data parallel x pipeline: 4 gloo processes on the CPU as 2 replicas x 2 pipeline
ranks end bit-identical to a 2-process data-parallel sequential run with the same global batch (SCPL, whose
SupCon gathers over each stage's replicas, and early_exit); a run whose last rank is SIGKILLed resumes
exactly; a world the pipeline does not divide is refused with one line.

The launched runs happen in a fresh interpreter (this file run as a script): ``accelerate.debug_launcher``
forks, and a fork of a process that has run torch work can deadlock.

    python tests/engines/test_processes_2d.py equal OUT_DIR
    python tests/engines/test_processes_2d.py resume OUT_DIR
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = ["train.progress=false", "model.hidden_size=16", "model.num_layers=2", "model.dropout=0",
        "data.synthetic_train_size=160", "data.synthetic_test_size=32", "train.batch_size=8", "train.epochs=1",
        "eval.every_group=false", "train.cpu=true", "model.encoder=lstm"]
PIPELINE = ["train.pipeline=processes", "train.stages_per_rank=[2,1]"]  # 3 stages as 2 + 1, per replica
METHODS = ("scpl", "early_exit")


def _check(scenario: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, scenario, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_two_replicas_of_a_two_rank_pipeline_train_exactly_as_two_process_data_parallel(tmp_path):
    _check("equal", tmp_path)


@pytest.mark.slow
def test_two_by_two_resume_after_one_rank_is_killed_is_exact(tmp_path):
    _check("resume", tmp_path)


def test_a_world_the_pipeline_does_not_divide_is_refused_with_one_line():
    from nlp_decouple.config import load_config
    from nlp_decouple.engines import data_replicas
    from nlp_decouple.errors import UserError

    t = load_config(None, ["method.name=scpl", *PIPELINE]).train
    assert data_replicas(t, 2) == 1 and data_replicas(t, 4) == 2 and data_replicas(t, 6) == 3
    with pytest.raises(UserError) as caught:
        data_replicas(t, 3)
    assert str(caught.value) == (
        "train.pipeline=processes: 3 launched processes (world size) do not split into pipelines of 2 ranks "
        "(train.stages_per_rank=[2, 1]); launch a multiple of 2 processes (replicas x 2: e.g. 4 for 2 replicas) or "
        "give train.stages_per_rank 3 entries")
    # without train.stages_per_rank every process is one pipeline rank (one replica), as before
    assert data_replicas(load_config(None, ["method.name=scpl", "train.pipeline=processes"]).train, 3) == 1
    assert data_replicas(load_config(None, ["method.name=scpl"]).train, 3) == 3  # plain data parallel


def test_the_trainer_refuses_the_layout_before_it_trains(tmp_path, one_thread):
    from nlp_decouple.config import load_config
    from nlp_decouple.errors import UserError
    from nlp_decouple.trainer import Trainer

    cfg = load_config(str(REPO / "recipes/quickstart.yaml"), [*BASE, f"output_dir={tmp_path}", "method.name=scpl",
                                                             *PIPELINE])
    with pytest.raises(UserError, match=r"^train.pipeline=processes: 1 launched processes \(world size\) do not "
                       "split into pipelines of 2 ranks"):
        Trainer(cfg)  # this one process: no replica of a 2-rank pipeline fits


def test_a_peer_lost_inside_a_stage_collective_ends_the_rank_with_one_line():
    import torch

    from nlp_decouple.engines.processes import Link, PipelinePeerError

    link = Link(torch.device("cpu"), torch.device("cpu"), timeout_s=5, in_flight=2)
    with pytest.raises(PipelinePeerError) as caught, link.guard("stage 1's forward"):  # SupCon's gather, say
        raise RuntimeError("[/src/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:33485: Connection reset "
                           "by peer. This is typically caused by a remote worker hanging.\nmore lines")
    assert str(caught.value) == ("pipeline rank 0: stage 1's forward failed (Read error [127.0.0.1]:33485: Connection "
                                 "reset by peer); another rank has probably failed or hangs: see its log")
    with pytest.raises(RuntimeError, match="shapes cannot"), link.guard("stage 1's forward"):  # not a peer's fault
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")


# ---- the launched side (a fresh interpreter) ----

def fit(out: Path, name: str, *extra: str) -> dict:
    import torch

    from nlp_decouple.config import load_config
    from nlp_decouple.trainer import Trainer

    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", f"run_name={name}", *extra]))
    if "train.pipeline=processes" in extra:  # really 2 replicas x 2 pipeline ranks, each replica half the batches
        engine, batches = trainer.engine, math.ceil(len(trainer.loaders.train.dataset) / 8)
        assert (engine.layout.dp, engine.layout.pp, engine.world) == (2, 2, 4), engine.layout
        assert len(trainer.loaders.train) == math.ceil(batches / 2), (len(trainer.loaders.train), batches)
    record, losses, samples = trainer._record_losses, [], []

    def recording(state, chunk_losses, bar):  # rank 0's view: its (replica's) losses per step
        record(state, chunk_losses, bar)
        losses.extend(torch.as_tensor(r).tolist() for r in chunk_losses)
        samples.append((state.step, state.samples))  # the samples over every rank, at the chunk's end
    trainer._record_losses = recording
    trainer.fit()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return {"weights": weights, "steps": (losses, samples)}


def launched(out: Path, runs: list[tuple[str, ...]]) -> None:
    import torch
    import torch.distributed as dist

    for name, *extra in runs:
        got = fit(out, name, *extra)
        if dist.get_rank() == 0:
            torch.save(got, out / f"{name}.pt")


def same(a: dict, b: dict, what: str) -> None:
    import torch

    assert a["steps"] == b["steps"], (what, a["steps"], b["steps"])  # step, samples seen, losses: equal
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), f"{what}: {key} differs"


def equal(out: Path) -> None:
    import torch
    from accelerate import debug_launcher

    out.mkdir(parents=True, exist_ok=True)
    debug_launcher(lambda: launched(out, [(f"pp-{m}", f"method.name={m}", "train.max_steps=4", *PIPELINE)
                                          for m in METHODS]), num_processes=4)
    debug_launcher(lambda: launched(out, [(f"dp-{m}", f"method.name={m}", "train.max_steps=4") for m in METHODS]),
                   num_processes=2)
    for m in METHODS:
        same(torch.load(out / f"pp-{m}.pt"), torch.load(out / f"dp-{m}.pt"), m)


def resume_run(out: Path, kill_at: int | None) -> None:
    import torch.distributed as dist
    from _process_check import die_at_head_call, save_weights  # this file runs as a script beside it

    from nlp_decouple.config import load_config
    from nlp_decouple.trainer import Trainer

    extra = ["method.name=scpl", *PIPELINE, "train.save_every=2", "train.max_steps=5", "train.resume=auto"]
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={out}", "run_name=killed", *extra]))
    if kill_at is not None and dist.get_rank() == 3:  # replica 1's last rank dies after the step-2 checkpoint
        die_at_head_call(trainer, kill_at)
    trainer.fit()
    if dist.get_rank() == 0:
        save_weights(trainer, out / "resumed.pt")


def resume(out: Path) -> None:
    import torch
    from accelerate import debug_launcher

    out.mkdir(parents=True, exist_ok=True)
    try:
        debug_launcher(lambda: resume_run(out, kill_at=4), num_processes=4)
        raise AssertionError("the killed run finished")
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001 - the launcher reports the killed child
        print(f"killed run ended: {type(err).__name__}")
    checkpoints = sorted(p.name for p in (out / "killed" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints[-1] == "step_00000002", checkpoints
    debug_launcher(lambda: resume_run(out, kill_at=None), num_processes=4)
    # the reference: the same steps uninterrupted, data parallel over 2 processes
    debug_launcher(lambda: launched(out, [("dp-whole", "method.name=scpl", "train.max_steps=5")]), num_processes=2)
    resumed, ref = torch.load(out / "resumed.pt"), torch.load(out / "dp-whole.pt")["weights"]
    for key in ref:
        assert torch.equal(resumed[key], ref[key]), f"resumed: {key} differs"


if __name__ == "__main__":
    from nlp_decouple.trainer import Trainer  # noqa: F401 - imported before the forks: each child would import it

    scenario, where = sys.argv[1], Path(sys.argv[2])
    {"equal": equal, "resume": resume}[scenario](where)
    print("ok")
