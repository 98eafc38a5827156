"""train.pipeline=torch_gpipe | torch_1f1b: bp on torch.distributed.pipelining over 2 gloo processes ends
where sequential bp ends (float rounding), for both schedules and both encoders, its checkpoint restores
each rank; what these engines cannot run is refused with one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlp_decouple.config import load_config
from nlp_decouple.engines.pipelining import Partition, peer_guard
from nlp_decouple.engines.processes import PipelinePeerError
from nlp_decouple.errors import UserError
from nlp_decouple.models import BlockGroup, Carry, LSTMBlock

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_train_as_sequential_bp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "engines" / "_pipelining_check.py"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("value", ["torch_gpipe", "torch_1f1b"])
def test_the_torch_schedules_are_pipeline_values(value):
    assert load_config(None, ["method.name=bp", f"train.pipeline={value}"]).train.pipeline == value


@pytest.mark.parametrize("overrides,match", [
    (["method.name=scpl"], r"^train.pipeline=torch_gpipe pipelines bp .*: set method.name=bp, or "
                           r"train.pipeline=processes for scpl$"),
    (["method.name=bp", "train.mixed_precision=fp16"], "bf16"),
    (["method.name=bp", "train.stages_per_rank=[1,2]"], "needs train.pipeline=processes"),
    (["method.name=bp", "train.micro_batches=0"], "micro_batches"),
])
def test_what_a_torch_pipeline_cannot_run_is_refused(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(None, ["train.pipeline=torch_gpipe", *overrides])


def test_one_process_is_refused_with_one_line(tmp_path):
    from nlp_decouple.trainer import Trainer

    cfg = load_config("recipes/quickstart.yaml", ["train.progress=false", "method.name=bp", "train.pipeline=torch_1f1b",
                                                  "data.synthetic_train_size=100", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"^train.pipeline=torch_1f1b pipelines bp over the processes of a launch"):
        Trainer(cfg)


def test_a_partition_cuts_the_padded_carry_back_to_its_micro_batch():
    """What travels is padded to the wire's rows and tokens; the receiving block computes on the
    micro-batch's own rows and length only, so its output equals the unpadded computation."""
    torch.manual_seed(0)
    group = BlockGroup([LSTMBlock(4, 3)])
    hidden, mask = torch.randn(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    want = group(Carry(hidden, mask))
    wire = torch.nn.functional.pad(hidden, (0, 0, 0, 3, 0, 1))  # 3 rows by 8 tokens
    wire[2:] = 7.0  # padding rows never reach the computation
    out = Partition([group], None, first=False, wire=(3, 8))(wire, mask=mask)
    assert [t.shape for t in out] == [(3, 8, 6), (2, 3, 3), (2, 3, 3)]
    torch.testing.assert_close(out[0][:2, :5], want.hidden, rtol=0, atol=0)
    assert out[0][2:].abs().sum() == 0 and out[0][:, 5:].abs().sum() == 0
    torch.testing.assert_close(out[1][:, :2], want.state[0], rtol=0, atol=0)


def test_a_lost_peer_ends_a_step_with_one_line_and_other_errors_pass():
    with pytest.raises(PipelinePeerError) as caught:
        with peer_guard("a pipelined bp step"):
            raise torch.distributed.DistBackendError(
                "[/src/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4. more\nlines")
    assert str(caught.value) == ("pipeline rank 0: a pipelined bp step failed (Connection closed by peer "
                                 "[127.0.0.1]:4); another rank has probably failed or hangs: see its log")
    with pytest.raises(RuntimeError, match="^size mismatch$"):
        with peer_guard("a pipelined bp step"):
            raise RuntimeError("size mismatch")
