"""method.gather_features: SupCon over every process's batch.

Two gloo CPU processes run tests/losses/_gather_check.py in a fresh interpreter (see its docstring); one
process checks that the gather is a no-op without a process group."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlp_decouple.losses import gather_batch, world_size
from nlp_decouple.methods import ContrastiveHead

REPO = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).with_name("_gather_check.py")


def test_two_processes_match_one_process_on_the_concatenated_batch():
    """Every rank's loss, and the DDP-averaged gradients of the head and of the encoder below it, equal
    one process's on the concatenated batch: equal and unequal local batches, both divisors, gather
    forced on and automatic; and off, where each rank's loss is its local batch's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(CHECK)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0 and "gather ok" in proc.stdout, proc.stderr[-3000:]


def test_gather_is_a_no_op_without_a_process_group():
    assert world_size() == 1
    z, labels = torch.randn(5, 3, requires_grad=True), torch.tensor([0, 1, 0, 1, 2])
    got_z, got_labels = gather_batch(z, labels)
    assert got_z is z and got_labels is labels


@pytest.mark.parametrize("projection", ["identity", "mlp"])
def test_head_with_gather_on_equals_off_in_one_process(projection):
    torch.manual_seed(0)
    on = ContrastiveHead(6, projection, 4 if projection != "identity" else None, 0.1, "positives",
                         gather_features=True)
    off = ContrastiveHead(6, projection, 4 if projection != "identity" else None, 0.1, "positives",
                          gather_features=False)
    off.load_state_dict(on.state_dict())
    pooled, labels = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
    x_on, x_off = pooled.clone().requires_grad_(True), pooled.clone().requires_grad_(True)
    loss_on, loss_off = on(x_on, labels).loss, off(x_off, labels).loss
    assert torch.equal(loss_on, loss_off) and float(loss_on.detach()) > 0
    loss_on.backward()
    loss_off.backward()
    assert torch.equal(x_on.grad, x_off.grad)
    assert on(pooled, None).loss is None  # evaluation: no labels, no loss, no gather
