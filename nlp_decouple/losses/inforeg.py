"""DeInfoReg's information-regularisation loss (Huang, Lin, Chen 2025): invariance, variance, covariance."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def label_similarity(labels: Tensor, num_classes: int) -> Tensor:
    """Target similarity: 1 within a class, -1/(C-1) across classes (the simplex's cosine)."""
    same = labels[:, None] == labels[None, :]
    off = -1.0 / max(1, num_classes - 1)
    return torch.where(same, torch.ones((), device=labels.device), torch.full((), off, device=labels.device))


def invariance_term(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    return F.mse_loss(z @ z.T, label_similarity(labels, num_classes))


def variance_term(z: Tensor, eps: float = 1e-4) -> Tensor:
    if z.shape[0] < 2:
        # one example has no spread to measure (the unbiased variance is 0/0 = NaN): an explicit 0, still
        # attached to the graph, rather than a NaN or a constant penalty with no gradient to act on
        return z.sum() * 0.0
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean() / z.shape[0]  # the reference's extra 1/B


def covariance_term(z: Tensor) -> Tensor:
    b, d = z.shape  # b = 1: centred is exactly 0, so the term and its gradient are 0
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / max(1, b - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


class InfoRegLoss(nn.Module):
    """Weighted sum of the three terms on L2-normalised features ``z`` (B, d)."""

    def __init__(self, num_classes: int, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.num_classes, self.weights = num_classes, tuple(weights)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        z = z.float()
        w_inv, w_var, w_cov = self.weights
        return (w_inv * invariance_term(z, labels, self.num_classes) + w_var * variance_term(z)
                + w_cov * covariance_term(z))
