"""Two-process data parallel on CPU (accelerate.debug_launcher): every rank ends with the same weights,
for BP and every decoupled method, and evaluation gathers each example exactly once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.methods import METHODS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("method,backward", [(m, "per_group") for m in METHODS] + [("scpl", "sum")])
def test_two_cpu_processes_stay_in_sync(method, backward):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_ddp_check.py"), method, backward], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ranks agree" in proc.stdout, proc.stderr[-3000:]


def test_refuses_a_world_size_other_than_asked(tmp_path):
    from nlp_decouple.trainer import Trainer

    cfg = load_config("recipes/quickstart.yaml", ["train.progress=false", "train.num_processes=2",
                                                  "data.synthetic_train_size=100", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="train.num_processes=2 but 1 process"):
        Trainer(cfg)


def _agreement(scenario: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tests" / "_ddp_agreement.py"), scenario, str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_lr_schedule_under_two_processes_equals_one_process(tmp_path):
    one = _agreement("one-process-lr", tmp_path)
    assert one.returncode == 0 and "ok" in one.stdout, one.stderr[-3000:]
    two = _agreement("schedule", tmp_path)
    assert two.returncode == 0 and "ok" in two.stdout, two.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["per_group", "sum"])
def test_a_nan_on_one_rank_is_skipped_on_both(tmp_path, backward):
    proc = _agreement(f"nan-{backward}", tmp_path)  # a hang would end in the timeout
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_one_checkpoint(tmp_path):
    proc = _agreement("signal", tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_refuses_a_launch_accelerate_does_not_see(tmp_path, monkeypatch):
    """torchrun on a CPU machine without train.cpu: each rank would count itself alone and act as the main one."""
    from nlp_decouple.trainer import Trainer

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config("recipes/quickstart.yaml", ["train.progress=false", "data.synthetic_train_size=100",
                                                  f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="2 processes were launched but Accelerate counts 1; .*train.cpu=true"):
        Trainer(cfg)
