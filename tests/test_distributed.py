"""Two-process data parallel on CPU (accelerate.debug_launcher): every rank ends with the same weights,
for BP and every decoupled method, and evaluation gathers each example exactly once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.methods import METHODS

REPO = Path(__file__).resolve().parents[1]


SYNC_CASES = [(m, "per_group") for m in METHODS] + [("scpl", "sum")]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def sync_runs() -> subprocess.CompletedProcess:
    """Every case of the test below, each its own two-process launch, from one fresh interpreter: importing
    the trainer is most of such an interpreter's time, so it is paid once rather than once per case."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "_ddp_check.py"), *(f"{m}:{b}" for m, b in SYNC_CASES)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300 + 60 * len(SYNC_CASES))


@pytest.mark.slow
@pytest.mark.xdist_group("ddp_sync")  # the cases share one interpreter (sync_runs): keep them in one worker
@pytest.mark.parametrize("method,backward", SYNC_CASES)
def test_two_cpu_processes_stay_in_sync(sync_runs, method, backward):
    lines = sync_runs.stdout.splitlines()
    assert f"ranks agree: {method} {backward}" in lines, sync_runs.stdout[-3000:] + sync_runs.stderr[-3000:]


def test_refuses_a_world_size_other_than_asked(tmp_path):
    from nlp_decouple.trainer import Trainer

    cfg = load_config("recipes/quickstart.yaml", ["train.progress=false", "train.num_processes=2",
                                                  "data.synthetic_train_size=100", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="train.num_processes=2 but 1 process"):
        Trainer(cfg)


AGREEMENT = ["one-process-lr", "schedule", "nan-per_group", "nan-sum", "signal", "early-stop"]


@pytest.fixture(scope="module")
def agreement(tmp_path_factory) -> subprocess.CompletedProcess:
    """Every scenario of tests/_ddp_agreement.py, each in its own launch and folder, from one fresh
    interpreter (the imports paid once); a hang would end in the timeout."""
    out = tmp_path_factory.mktemp("agreement")
    return subprocess.run([sys.executable, str(REPO / "tests" / "_ddp_agreement.py"), *AGREEMENT, str(out)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)


def _ok(agreement: subprocess.CompletedProcess, scenario: str) -> None:
    assert f"ok {scenario}" in agreement.stdout.splitlines(), agreement.stdout[-3000:] + agreement.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("ddp_agreement")  # the scenarios share one interpreter (agreement): one worker
def test_lr_schedule_under_two_processes_equals_one_process(agreement):
    _ok(agreement, "one-process-lr")
    _ok(agreement, "schedule")


@pytest.mark.slow
@pytest.mark.xdist_group("ddp_agreement")
@pytest.mark.parametrize("backward", ["per_group", "sum"])
def test_a_nan_on_one_rank_is_skipped_on_both(agreement, backward):
    _ok(agreement, f"nan-{backward}")


@pytest.mark.slow
@pytest.mark.xdist_group("ddp_agreement")
def test_a_signal_to_one_rank_stops_both_at_one_checkpoint(agreement):
    _ok(agreement, "signal")


@pytest.mark.slow
def test_compare_under_torchrun_trains_its_runs_one_after_another_in_one_process_group(tmp_path):
    """The process group outlives each run (a run that ended it would leave the next one without a group),
    with no reset of Accelerate's process-wide state between runs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "nlp_decouple", "compare", str(REPO / "recipes" / "quickstart.yaml"), "methods=bp", "seeds=0,1",
           "train.cpu=true", "train.epochs=1", "data.synthetic_train_size=200", "data.synthetic_test_size=60",
           "model.hidden_size=8", "eval.probe_samples=50", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for seed in (0, 1):
        results = json.loads((tmp_path / f"bp-seed{seed}" / "results.json").read_text())
        assert results["num_processes"] == 2 and results["seed"] == seed
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("ddp_agreement")
def test_early_stopping_is_agreed_by_every_rank(agreement):
    _ok(agreement, "early-stop")


def test_refuses_a_launch_accelerate_does_not_see(tmp_path, monkeypatch):
    """torchrun on a CPU machine without train.cpu: each rank would count itself alone and act as the main one."""
    from nlp_decouple.trainer import Trainer

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config("recipes/quickstart.yaml", ["train.progress=false", "data.synthetic_train_size=100",
                                                  f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="2 processes were launched but Accelerate counts 1; .*train.cpu=true"):
        Trainer(cfg)
