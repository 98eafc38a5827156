"""Encoder blocks with one interface: ``forward(carry) -> carry`` and ``pool(carry) -> (B, pool_dim)``.

A :class:`Carry` is what flows from block to block: hidden states, the padding mask and, after an LSTM,
its final (h, c). Cutting gradient flow between layer groups is ``carry.detach()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass
class Carry:
    hidden: Tensor  # (B, T) token ids before the embedding block, then (B, T, d)
    mask: Tensor  # (B, T) bool, True on real tokens
    state: tuple[Tensor, Tensor] | None = None  # LSTM final (h, c), each (2, B, h)
    # AL's label side; what a pretrained family's first layer computes for the later ones (models.pretrained)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> "Carry":
        state = None if self.state is None else (self.state[0].detach(), self.state[1].detach())
        return Carry(self.hidden.detach(), self.mask, state, {k: v.detach() for k, v in self.extras.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Carry":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        state = None if self.state is None else (move(self.state[0]), move(self.state[1]))
        return Carry(move(self.hidden), move(self.mask), state, {k: move(v) for k, v in self.extras.items()})

    def with_(self, **changes) -> "Carry":
        return replace(self, **changes)


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens only: (B, T, d), (B, T) -> (B, d). Padding never enters the average."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def sinusoidal_table(length: int, dim: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table


class EmbeddingBlock(nn.Module):
    """Token embedding (+ positional encoding for Transformers); pooled as a masked mean."""

    def __init__(self, vocab_size: int, dim: int, pad_id: int, max_length: int,
                 positional: str = "none", dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positional = positional
        if positional == "learned":
            self.position = nn.Embedding(max_length, dim)
        elif positional == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_table(max_length, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = self.pool_dim = dim

    def forward(self, carry: Carry) -> Carry:
        ids = carry.hidden
        x = self.embed(ids)
        if self.positional == "learned":
            x = x + self.position(torch.arange(ids.shape[1], device=ids.device))
        elif self.positional == "sinusoidal":
            x = x + self.position_table[: ids.shape[1]].to(x.dtype)
        return carry.with_(hidden=self.dropout(x))

    def pool(self, carry: Carry) -> Tensor:
        return masked_mean(carry.hidden, carry.mask)


class LSTMBlock(nn.Module):
    """One bidirectional LSTM layer over packed sequences, so padding never enters the state.

    Pooled as ``(h_fwd + h_bwd) / 2`` of the final states (or a masked mean of the outputs)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.0, pooling: str = "last",
                 state_handoff: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.pooling, self.state_handoff = pooling, state_handoff
        self.out_dim = 2 * hidden
        self.pool_dim = hidden if pooling == "last" else 2 * hidden

    def forward(self, carry: Carry) -> Carry:
        x, mask = carry.hidden, carry.mask
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        init = carry.state if (self.state_handoff and carry.state is not None) else None
        out, (h, c) = self.lstm(packed, init)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return carry.with_(hidden=self.dropout(out), state=(h, c))

    def pool(self, carry: Carry) -> Tensor:
        if self.pooling == "mean":
            return masked_mean(carry.hidden, carry.mask)
        h = carry.state[0]  # (2, B, hidden): forward and backward final states
        return (h[0] + h[1]) / 2


class TransformerBlock(nn.Module):
    """One Transformer encoder layer (pre- or post-norm); pooled as a masked mean or the first token."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1, norm: str = "post",
                 pooling: str = "mean"):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, activation="gelu",
                                                batch_first=True, norm_first=norm == "pre")
        self.pooling = pooling
        self.out_dim = self.pool_dim = dim

    def forward(self, carry: Carry) -> Carry:
        out = self.layer(carry.hidden, src_key_padding_mask=~carry.mask)
        # the fused inference path may leave padded positions as garbage/zeros: keep them zero
        return carry.with_(hidden=out.masked_fill(~carry.mask.unsqueeze(-1), 0.0))

    def pool(self, carry: Carry) -> Tensor:
        if self.pooling == "cls":
            return carry.hidden[:, 0]
        return masked_mean(carry.hidden, carry.mask)


class BlockGroup(nn.Module):
    """Consecutive blocks trained together: the unit that decoupled methods cut between."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.pool_dim = blocks[-1].pool_dim
        self.out_dim = blocks[-1].out_dim

    def forward(self, carry: Carry) -> Carry:
        for block in self.blocks:
            carry = block(carry)
        return carry

    def pool(self, carry: Carry) -> Tensor:
        return self.blocks[-1].pool(carry)
