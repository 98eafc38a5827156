"""Checkpoints: a run SIGKILLed at arbitrary points and resumed ends exactly like an uninterrupted one;
half-written checkpoints are never picked up; a checkpoint from another config is refused."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlp_decouple.checkpoint import complete_checkpoints, find_resume_point
from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.provenance import code_version
from nlp_decouple.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
COMMON = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=32", "model.num_layers=2",
          "train.epochs=2", "train.batch_size=32", "data.synthetic_train_size=600", "data.synthetic_test_size=100",
          "train.save_every=4", "train.deterministic=true", "eval.probe_samples=100", "run_name=run"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nlp_decouple.train", "recipes/quickstart.yaml", *COMMON, f"output_dir={out}", *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _kill_after_checkpoint(forks, out: Path, step: int, *extra: str) -> None:
    """Start a run and SIGKILL it as soon as the checkpoint of ``step`` exists (somewhere after it). The run is
    a fork of tests/_train_forks.py's server (the trainer imported once), a process of its own."""
    argv = ["recipes/quickstart.yaml", *COMMON, f"output_dir={out}", "train.resume=auto", *extra]
    pid = forks.start(argv, out.parent / f"{out.name}-killed-{step}.log")
    target = out / "run" / "checkpoints" / f"step_{step:08d}"
    deadline, code = time.time() + 240, None
    while not target.exists() and (code := forks.poll(pid)) is None and time.time() < deadline:
        time.sleep(0.02)
    if code is None:  # not reaped until the server says so: still this run's pid, alive or a zombie
        os.kill(pid, signal.SIGKILL)
        assert forks.wait(pid) == -signal.SIGKILL
    assert target.exists(), f"the run never wrote the checkpoint of step {step}"


def _resume(forks, out: Path, *extra: str) -> tuple[int, str]:
    """The same command with train.resume=auto, run to the end (forked like the killed runs): exit code, log."""
    log = out.parent / f"{out.name}-resumed.log"
    pid = forks.start(["recipes/quickstart.yaml", *COMMON, f"output_dir={out}", "train.resume=auto", *extra], log)
    return forks.wait(pid), log.read_text()


def _final(out: Path) -> tuple[dict, dict, list[dict]]:
    weights = load_file(str(out / "run" / "last" / "model.safetensors"))
    results = json.loads((out / "run" / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("epoch_time_s")
    return weights, results, rows


PIPELINED = ["train.pipeline=true", "train.devices=cpu", "model.dropout=0"]  # threads: no shared RNG order


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("bp", ["train.scheduler=linear", "train.warmup_ratio=0.2"]), ("scpl", []),
                                          ("scpl", PIPELINED)],
                         ids=["bp-linear-schedule", "scpl", "scpl-pipelined"])
def test_sigkill_and_resume_gives_identical_weights_and_metrics(tmp_path, train_forks, method, extra):
    reference = tmp_path / "uninterrupted"  # a fresh interpreter, as a user runs it
    assert _train(reference, f"method.name={method}", *extra).returncode == 0
    interrupted = tmp_path / "interrupted"
    # kill points: mid first epoch, then in the second epoch after a resume, then resume to the end
    for step in (4, 20):
        _kill_after_checkpoint(train_forks, interrupted, step, f"method.name={method}", *extra)
    code, log = _resume(train_forks, interrupted, f"method.name={method}", *extra)
    assert code == 0, log[-3000:]
    assert "resumed from" in log
    w_ref, r_ref, m_ref = _final(reference)
    w_new, r_new, m_new = _final(interrupted)
    assert w_ref.keys() == w_new.keys()
    for key in w_ref:
        assert torch.equal(w_ref[key], w_new[key]), key
    assert m_ref == m_new
    for key in ("test_accuracy", "test_macro_f1", "best_epoch", "steps", "confusion_matrix"):
        assert r_ref[key] == r_new[key], key


def test_half_written_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000004").mkdir(parents=True)
    (root / "step_00000004" / "trainer_state.json").write_text("{}")
    (root / ".tmp-step_00000008").mkdir()  # killed mid-write: never renamed into place
    (root / "step_00000012").mkdir()  # no state file: incomplete
    assert [p.name for p in complete_checkpoints(root)] == ["step_00000004"]
    assert find_resume_point("auto", root).name == "step_00000004"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        find_resume_point(str(root / "step_00000012"), root)


def _tiny(tmp_path, *extra):
    return load_config("recipes/quickstart.yaml", [*COMMON, f"output_dir={tmp_path}", "train.epochs=1",
                                                   "data.synthetic_train_size=200", *extra])


def test_checkpoint_of_another_model_is_refused(tmp_path):
    Trainer(_tiny(tmp_path)).fit()
    with pytest.raises(UserError, match="different config"):
        Trainer(_tiny(tmp_path, "model.hidden_size=48", "train.resume=auto")).fit()


@pytest.mark.parametrize("change", ["train.lr=5e-3", "train.epochs=3", "train.scheduler=linear", "train.max_steps=50"])
def test_resume_with_another_schedule_is_refused(tmp_path, change):
    """The learning-rate curve depends on these: a resume with other values would silently bend it."""
    Trainer(_tiny(tmp_path)).fit()
    key = change.split("=")[0]
    with pytest.raises(UserError, match=f"different config .*{key}"):
        Trainer(_tiny(tmp_path, change, "train.resume=auto")).fit()


def test_resume_may_change_how_a_run_is_carried_out(tmp_path):
    """Where and how a run is kept (progress bar, checkpoint cadence) is not part of what it computes."""
    first = Trainer(_tiny(tmp_path)).fit()
    again = Trainer(_tiny(tmp_path, "train.resume=auto", "train.progress=true", "train.keep_checkpoints=5")).fit()
    assert again["steps"] == first["steps"]


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path):
    first = Trainer(_tiny(tmp_path)).fit()
    again = Trainer(_tiny(tmp_path, "train.resume=auto")).fit()
    assert again["steps"] == first["steps"] and again["test_accuracy"] == first["test_accuracy"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, train_forks):
    argv = ["recipes/quickstart.yaml", *COMMON, f"output_dir={tmp_path}", "train.save_every=1000", "train.epochs=50"]
    log = tmp_path / "train-output.log"
    pid = train_forks.start(argv, log)  # a fork of tests/_train_forks.py's server: a process of its own
    metrics = tmp_path / "run" / "metrics.jsonl"  # its first row is written when epoch 1 ends: into training
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        assert train_forks.poll(pid) is None, log.read_text()[-3000:]
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    code = train_forks.wait(pid, timeout=120)
    err = log.read_text()
    assert code == 2, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert complete_checkpoints(tmp_path / "run" / "checkpoints")


def test_resume_loads_nothing_unsafe(tmp_path, monkeypatch):
    """Weights come from safetensors; every torch.load on the way (optimizer, scheduler, RNG states)
    runs with weights_only=True, so a tampered checkpoint cannot execute code."""
    Trainer(_tiny(tmp_path)).fit()
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Trainer(_tiny(tmp_path, "train.resume=auto")).fit()
    assert calls and all(flag is True for flag in calls), calls
    checkpoint = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert not list(checkpoint.glob("*.bin")) or list(checkpoint.glob("model*.safetensors"))
    assert not list(checkpoint.glob("pytorch_model*.bin"))


@pytest.mark.parametrize("key, reason", [("code", "by other code"), ("data", "on other data")])
def test_resume_of_a_checkpoint_made_by_other_code_or_data_is_refused_unless_asked(tmp_path, key, reason):
    first = Trainer(_tiny(tmp_path)).fit()
    assert first["code_version"] == code_version() and len(first["data_fingerprint"]) == 16
    newest = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1] / "trainer_state.json"
    state = json.loads(newest.read_text())
    assert state["identity"]["code"] == code_version()["id"]
    assert state["identity"]["data"] == first["data_fingerprint"]
    state["identity"][key] = "git:0123456789abcdef"  # as if written by another version
    newest.write_text(json.dumps(state))
    with pytest.raises(UserError, match=f"{reason} .*train.resume_other_versions=true") as info:
        Trainer(_tiny(tmp_path, "train.resume=auto")).fit()
    assert "\n" not in str(info.value)
    again = Trainer(_tiny(tmp_path, "train.resume=auto", "train.resume_other_versions=true")).fit()
    assert again["steps"] == first["steps"] and again["test_accuracy"] == first["test_accuracy"]
