"""Small local heads: projections and classifiers that sit on a group's pooled vector."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm that uses its running statistics on a one-example training batch (an epoch's last
    batch can be that small), where batch statistics do not exist and torch would raise."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class Standardizer(BatchNorm1d):
    """Per-feature standardisation (an affine-free BatchNorm) of the detached features a classifier reads.
    Evaluation refreshes its statistics from training texts under the current weights
    (:func:`nlp_decouple.metrics.refresh_standardizers`): running averages lag features that a local loss
    moves fast, and the lag alone cost SCPL's exit several points (docs/methods.md)."""

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)


def make_projection(kind: str, in_dim: int, out_dim: int | None = None) -> nn.Module:
    """identity | linear | mlp (Linear -> ReLU -> Linear), as in the SCPL reference | mlp_bn (Linear ->
    BatchNorm -> ReLU -> Linear, SimCLR's head). The BatchNorm centres each feature over the batch:
    mean-pooled Transformer features share a large common component (the averaged positional code),
    so at initialisation any two texts have cosine ~0.9 and SupCon starts near its chance value
    log(B - 1); centring removes that component at once."""
    out_dim = out_dim or in_dim
    if kind == "identity":
        if out_dim != in_dim:
            raise ValueError("an identity projection keeps the pooled size: leave method.projection_dim unset")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))
    if kind == "mlp_bn":
        return nn.Sequential(nn.Linear(in_dim, in_dim), BatchNorm1d(in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"unknown projection {kind!r}")


class Classifier(nn.Sequential):
    """Linear(d, d) -> Tanh -> Linear(d, C): the classifier shape BP and SCPL share."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__(nn.Linear(in_dim, in_dim), nn.Tanh(), nn.Linear(in_dim, num_classes))
