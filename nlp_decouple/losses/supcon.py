"""Supervised contrastive loss (Khosla et al. 2020, "SupCon out"), single view."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SupConLoss(nn.Module):
    """For L2-normalised ``z`` (B, d) and labels (B,):

    ``L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )``

    with P(i) = {p != i : y_p = y_i}; the loss is the mean over anchors with |P(i)| > 0.
    ``divisor="positives_plus_one"`` reproduces the SCPL reference code instead: it divides by
    |P(i)| + 1 and averages over *all* anchors (those without positives count as 0).

    A batch where no anchor has a positive carries no signal: the loss is an explicit 0 (still
    attached to the graph, so a backward is a no-op rather than an error).

    ``memory``: optional (features (M, d), labels (M,)) of earlier batches. They join the contrast set
    (as positives P(i) and in the denominator A(i)) but are not anchors; no gradient reaches them.
    ``centers``: optional (C, d) class prototypes, row c of class c. They join the contrast set like the
    memory but do receive gradients (learnable class centres, as in parametric contrastive learning).
    ``learn_temperature``: tau becomes a parameter (its log, starting at ``temperature``), trained with the
    loss as CLIP trains its logit scale, and kept at or above ``MIN_TEMPERATURE``.
    """

    MIN_TEMPERATURE = 0.01  # CLIP's cap on the logit scale (100)

    def __init__(self, temperature: float = 0.1, divisor: str = "positives", learn_temperature: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if divisor not in ("positives", "positives_plus_one"):
            raise ValueError(f"unknown divisor {divisor!r}")
        self.divisor = divisor
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature))) if learn_temperature else None
        self._temperature = temperature

    @property
    def temperature(self) -> Tensor | float:
        if self.log_temperature is None:
            return self._temperature
        return self.log_temperature.exp().clamp(min=self.MIN_TEMPERATURE)

    def forward(self, z: Tensor, labels: Tensor, memory: tuple[Tensor, Tensor] | None = None,
                centers: Tensor | None = None) -> Tensor:
        z = z.float()  # contrastive logits at 1/tau scale overflow in half precision
        n = z.shape[0]
        contrast, contrast_labels = z, labels
        if memory is not None and memory[0].shape[0]:
            contrast = torch.cat([contrast, memory[0].detach().float()])
            contrast_labels = torch.cat([contrast_labels, memory[1].to(labels.device)])
        if centers is not None:
            contrast = torch.cat([contrast, centers.float()])
            contrast_labels = torch.cat([contrast_labels, torch.arange(centers.shape[0], device=labels.device)])
        if contrast.shape[0] < 2:  # a single text has no pair at all
            return z.sum() * 0.0
        # anchor i sits in column i of the contrast set (memory and centres come after the batch)
        self_mask = torch.eye(n, contrast.shape[0], dtype=torch.bool, device=z.device)
        logits = z @ contrast.T / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only
        logits = logits.masked_fill(self_mask, float("-inf"))  # A(i) excludes the anchor itself
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (labels[:, None] == contrast_labels[None, :]) & ~self_mask
        num_pos = positives.sum(1)
        summed = log_prob.masked_fill(~positives, 0.0).sum(1)
        if self.divisor == "positives_plus_one":
            return -(summed / (num_pos + 1)).mean()
        # the mean over anchors with a positive, without asking the host which they are (no device sync):
        # an anchor without one adds 0 to the sum; none at all gives 0, still attached to the graph
        anchors = (num_pos > 0).sum().clamp(min=1)
        return -(summed / num_pos.clamp(min=1)).sum() / anchors
