"""A tiny model and batch shared by the method tests (random ids, padded, every class twice)."""
from __future__ import annotations

import torch

from nlp_decouple.config import load_config
from nlp_decouple.classifier import StagedClassifier

VOCAB, PAD, CLASSES, MAXLEN = 30, 0, 4, 16


def build(method: str, *extra: str) -> StagedClassifier:
    cfg = load_config(None, ["model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2",
                             "model.dropout=0", f"method.name={method}", *extra])
    torch.manual_seed(0)
    return StagedClassifier.from_config(cfg, VOCAB, PAD, CLASSES, MAXLEN)


def batch(b: int = 8, t: int = 9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    ids = ids.masked_fill(~mask, PAD)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3][:b])  # every class twice: SupCon has positives
    return ids, mask, labels
