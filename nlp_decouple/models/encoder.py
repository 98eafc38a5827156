"""Build the block stack of a config and cut it into layer groups."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, check_groups
from ..errors import UserError
from .blocks import BlockGroup, EmbeddingBlock, LSTMBlock, TransformerBlock
from .pretrained import build_pretrained_blocks

log = logging.getLogger(__name__)


def build_blocks(cfg: ModelConfig, vocab_size: int, pad_id: int, max_length: int,
                 hub_config: dict | None = None) -> list[nn.Module]:
    """``hub_config``: a saved pretrained encoder's Hub config, built without the Hub (nlp_decouple.hf)."""
    if cfg.encoder == "pretrained":
        blocks = build_pretrained_blocks(cfg, vocab_size, pad_id, max_length, hub_config)
        check_groups(cfg)  # the layer count may only now be known
        return blocks
    embed_dim = cfg.embed_dim or cfg.hidden_size
    if cfg.encoder == "transformer":
        # +2: room for the [CLS]/[SEP] a tokenizer may add beyond max_length
        blocks: list[nn.Module] = [EmbeddingBlock(vocab_size, embed_dim, pad_id, max_length + 2,
                                                  cfg.positional, cfg.dropout)]
        blocks += [TransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.ffn_size, cfg.dropout, cfg.norm,
                                    cfg.pooling) for _ in range(cfg.num_layers)]
    else:
        # word order comes from the recurrence: no positional encoding for LSTMs
        blocks = [EmbeddingBlock(vocab_size, embed_dim, pad_id, max_length + 2, "none", cfg.dropout)]
        in_dim = embed_dim
        for _ in range(cfg.num_layers):
            blocks.append(LSTMBlock(in_dim, cfg.hidden_size, cfg.dropout, cfg.lstm_pooling,
                                    cfg.lstm_state_handoff))
            in_dim = blocks[-1].out_dim
    return blocks


def cut_into_groups(blocks: list[nn.Module], sizes: list[int]) -> list[BlockGroup]:
    if sum(sizes) != len(blocks):
        raise ValueError(f"group sizes {sizes} do not cover {len(blocks)} blocks")
    groups, start = [], 0
    for size in sizes:
        groups.append(BlockGroup(blocks[start:start + size]))
        start += size
    return groups


def load_word_vectors(embedding: nn.Embedding, path: str, vocab: dict[str, int]) -> float:
    """Initialise rows of ``embedding`` from a GloVe-format text file; returns the vocabulary coverage."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"model.word_vectors {path!r} not found: give a GloVe-format text file")
    dim, found = embedding.embedding_dim, 0
    with torch.no_grad(), file.open(encoding="utf8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            word, *values = line.rstrip().split(" ")
            if word not in vocab or len(values) < 2:
                continue
            if len(values) != dim:
                raise UserError(f"model.word_vectors {path!r} line {line_no}: {len(values)} dimensions, but "
                                f"the embedding has {dim}; set model.embed_dim={len(values)}")
            embedding.weight[vocab[word]] = torch.tensor([float(v) for v in values])
            found += 1
    coverage = found / max(1, len(vocab))
    log.info("word vectors: %d of %d tokens (%.1f%%) initialised from %s", found, len(vocab), 100 * coverage, path)
    return coverage
