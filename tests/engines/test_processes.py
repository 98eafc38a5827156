"""train.pipeline=processes: 2 and 3 gloo processes on the CPU end bit-identical to sequential training for
every decoupled method and both encoders; a run whose rank 1 is SIGKILLed resumes exactly; layouts and
methods the process pipeline cannot run are refused with one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlp_decouple.config import load_config
from nlp_decouple.engines.processes import Link, PipelinePeerError, stage_owners
from nlp_decouple.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _check(scenario: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # a guard against a hang: "equal" takes 150-200 s alone on 2 cores, over 300 s beside the rest of the suite
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "engines" / "_process_check.py"), scenario, str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_and_three_ranks_train_exactly_as_sequential(tmp_path):
    _check("equal", tmp_path)  # 4 methods x lstm, transformer, and al on a tiny BERT; balanced and given layouts


@pytest.mark.slow
def test_resume_after_one_rank_is_killed_is_exact(tmp_path):
    _check("resume", tmp_path)  # with dropout: seeded per step and stage, so also == a one-process pipeline


def test_stages_go_to_ranks_in_contiguous_blocks():
    assert stage_owners(3, 2) == [0, 1, 1]
    assert stage_owners(4, 2) == [0, 0, 1, 1]
    assert stage_owners(3, 3) == [0, 1, 2]
    assert stage_owners(3, 1) == [0, 0, 0]
    assert stage_owners(3, 2, [2, 1]) == [0, 0, 1]
    with pytest.raises(UserError, match="at most 3 processes"):
        stage_owners(3, 4)
    with pytest.raises(UserError, match="lists 2 ranks but 4 processes"):
        stage_owners(4, 4, [2, 2])
    with pytest.raises(UserError, match="sum to the model's 3 stages"):
        stage_owners(3, 2, [3, 1])


def test_pipeline_values_stay_compatible():
    assert load_config(None, ["train.pipeline=true", "method.name=scpl"]).train.pipeline is True  # true = threads
    assert load_config(None, ["train.pipeline=threads", "method.name=scpl"]).train.pipeline == "threads"
    assert load_config(None, ["train.pipeline=processes", "method.name=scpl"]).train.pipeline == "processes"
    with pytest.raises(UserError, match="train.pipeline"):
        load_config(None, ["train.pipeline=procs"])


@pytest.mark.parametrize("overrides,match", [
    (["method.name=bp"], "for bp use train.pipeline=torch_gpipe or torch_1f1b"),
    (["method.name=scpl", "method.backward=sum"], "method.backward=per_group"),
    (["method.name=scpl", "method.gather_features=true"], "unset method.gather_features"),
    (["method.name=scpl", "train.mixed_precision=fp16"], "bf16"),
])
def test_what_a_process_pipeline_cannot_run_is_refused(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(None, ["train.pipeline=processes", *overrides])


def test_stages_per_rank_needs_the_process_pipeline():
    with pytest.raises(UserError, match="needs train.pipeline=processes"):
        load_config(None, ["method.name=scpl", "train.stages_per_rank=[1,2]"])


def test_a_lost_peer_ends_a_rank_with_one_line_naming_it():
    import torch

    class Lost:  # what gloo raises when the other end of a send or receive died
        def wait(self, timeout):
            raise RuntimeError("[/src/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4. "
                               "This is typically caused by a remote worker crashing.\nmore lines")

    link = Link(torch.device("cpu"), torch.device("cpu"), timeout_s=5, in_flight=2)
    with pytest.raises(PipelinePeerError) as caught:
        link.wait(Lost(), "receiving a carry from rank 1")
    assert str(caught.value) == ("pipeline rank 0: receiving a carry from rank 1 failed (Connection closed by peer "
                                 "[127.0.0.1]:4); another rank has probably failed or hangs: see its log")
    assert isinstance(caught.value, UserError)  # the CLI prints it as one line and exits 2
