"""All-gather of contrastive features across processes, so SupCon sees the whole N·B batch.

The forward concatenates every rank's rows; the backward sums the incoming gradient over ranks and
returns this rank's rows (the SimCLR / SupCon "GatherLayer"). Every rank computes the same loss on the
same gathered batch, so the summed gradient is N times the full-batch gradient of this rank's rows; DDP
then divides by N when it averages the parameter gradients, which leaves exactly the gradients of one
process on the concatenated batch. Ranks may hold different numbers of rows (the last batch of an
epoch): sizes are gathered first and each rank's rows padded to the largest, then trimmed.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Processes in ``group`` (the default group when None); 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _sizes(rows: int, device: torch.device, group: dist.ProcessGroup | None) -> list[int]:
    mine = torch.tensor([rows], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size(group))]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _gather_rows(x: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0; all_gather needs equal shapes, hence pad then trim."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> Tensor:
        rank = dist.get_rank(group)
        ctx.start, ctx.stop, ctx.group = sum(sizes[:rank]), sum(sizes[: rank + 1]), group
        return _gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        # every rank's loss reads this rank's rows: their gradient is the sum over ranks
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start: ctx.stop], None, None


def gather_batch(features: Tensor, labels: Tensor,
                 group: dist.ProcessGroup | None = None) -> tuple[Tensor, Tensor]:
    """Features (differentiable) and labels of every rank in ``group``, in rank order.

    A no-op (the inputs returned as they are) without an initialised process group or with one process.
    A collective: every rank of ``group`` must call it, and must run the backward of what it returns.
    """
    if world_size(group) == 1:
        return features, labels
    sizes = _sizes(features.shape[0], features.device, group)
    return _GatherWithGrad.apply(features, sizes, group), _gather_rows(labels, sizes, group)
