"""A first-in first-out memory of past features and labels (``method.supcon_queue``).

With many classes a batch holds few texts of each, so many SupCon anchors have no positive; the
memory adds the last ``size`` detached features to the contrast set (as in cross-batch memory, Wang
et al. 2020). Its contents are buffers, so a checkpoint saves them and a resumed run continues exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError("a feature queue needs size >= 1")
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows holding features
        self.register_buffer("next", torch.zeros((), dtype=torch.long))  # row the next feature goes to

    def contents(self) -> tuple[Tensor, Tensor]:
        n = int(self.filled)
        return self.features[:n], self.labels[:n]

    @torch.no_grad()
    def push(self, z: Tensor, labels: Tensor) -> None:
        size = self.features.shape[0]
        z, labels = z.detach()[-size:], labels[-size:]  # a batch larger than the queue keeps its last rows
        rows = (int(self.next) + torch.arange(z.shape[0], device=self.features.device)) % size
        self.features[rows] = z.to(self.features.dtype)
        self.labels[rows] = labels.to(self.labels.device)
        self.next.fill_((int(self.next) + z.shape[0]) % size)
        self.filled.fill_(min(size, int(self.filled) + z.shape[0]))
