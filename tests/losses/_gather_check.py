"""Run by tests/losses/test_supcon_gather.py in a fresh interpreter: two gloo CPU processes, each holding
part of one batch, train a small encoder + ContrastiveHead under DDP; the loss and the averaged
parameter gradients must equal one process's on the concatenated batch.

A fresh parent matters: starting processes from a pytest process that has already run torch work can
deadlock. The processes rendezvous through a file, not a port, so parallel test runs cannot collide.

Every case of CASES runs in the same two processes (starting them is the slow part).
"""
from __future__ import annotations

import os
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nlp_decouple.methods import ContrastiveHead

IN_DIM, POOLED_DIM = 6, 8
CASES = [  # rows per rank, gather_features, SupCon divisor
    ((4, 4), True, "positives"),  # labels 0..3 in turn: no anchor has a positive among its own rank's rows
    ((5, 2), None, "positives"),  # unequal local batches (the last batch of an epoch); None = auto, on
    ((3, 6), True, "positives_plus_one"),
    ((4, 4), False, "positives"),  # off: each rank's loss is its local batch's alone
]


class Net(nn.Module):
    """An 'encoder' below the head, to check the gradient that leaves the head too."""

    def __init__(self, gather: bool | None, divisor: str):
        super().__init__()
        self.encoder = nn.Linear(IN_DIM, POOLED_DIM)
        self.head = ContrastiveHead(POOLED_DIM, "mlp", 5, 0.1, divisor, gather_features=gather)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)), labels).loss


def full_batch(total: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(total, IN_DIM, generator=g), torch.arange(total) % 4


def loss_and_grads(net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.zero_grad()
    loss = net(x, labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


def check(rank: int, rows: tuple[int, int], gather: bool | None, divisor: str) -> None:
    torch.manual_seed(0)
    net = Net(gather, divisor)
    x, labels = full_batch(sum(rows))
    net.head.gather_features = False  # the reference: one process's loss on the concatenated batch
    ref_loss, ref_grads = loss_and_grads(net, x, labels)
    net.head.gather_features = gather

    local = slice(sum(rows[:rank]), sum(rows[: rank + 1]))
    ddp = DistributedDataParallel(net)  # averages the parameter gradients over the ranks
    ddp.zero_grad()
    loss = ddp(x[local], labels[local])
    loss.backward()
    losses = [torch.zeros(()) for _ in rows]
    dist.all_gather(losses, loss.detach())
    case = f"rows={rows} gather={gather} {divisor}, rank {rank}"
    if gather is False:
        with torch.no_grad():
            torch.testing.assert_close(loss.detach(), net(x[local], labels[local]))
        assert not torch.allclose(loss.detach(), ref_loss), f"{case}: a local loss should differ from the full batch's"
        return
    assert torch.equal(losses[0], losses[1]), f"{case}: ranks disagree on the loss: {losses}"
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case}: loss: {m}")
    for (name, p), want in zip(net.named_parameters(), ref_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{case}: {name}: {m}")


def worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        for rows, gather, divisor in CASES:
            check(rank, rows, gather, divisor)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        # forked, not spawned: this parent has only imported (no torch work yet), and each spawned child
        # would import torch and the package again
        mp.start_processes(worker, args=(os.path.join(tmp, "rendezvous"),), nprocs=2, start_method="fork")
    print("gather ok")
