"""DeBERTa-v2 and v3 (``deberta-v2``): disentangled attention reads a relative position embedding table
(normalised by the encoder's LayerNorm) and the relative positions, both computed once by the Hub's
encoder for all layers, here by the first layer's block (:class:`.blocks.SharingLayerBlock`), which also
runs the convolution some v2 checkpoints add after the first layer."""
from __future__ import annotations

from functools import partial

from torch import Tensor

from ..blocks import Carry
from .blocks import HubEmbeddingBlock, SharingLayerBlock, split_sharing

REL_EMBEDDINGS = "deberta_rel_embeddings"  # carry.extras: (2 * buckets, hidden), after the encoder's LayerNorm
REL_POS = "deberta_rel_pos"  # carry.extras: (1, T, T) long, bucketed relative positions


def pair_mask(mask: Tensor) -> Tensor:
    """``DebertaV2Encoder.get_attention_mask`` of a (B, T) mask: (B, 1, T, T), query and key both real."""
    return mask[:, None, None, :] & mask[:, None, :, None]


class DebertaV2EmbeddingBlock(HubEmbeddingBlock):
    def embed_ids(self, carry: Carry) -> Tensor:
        return self.embeddings(input_ids=carry.hidden, mask=carry.mask)  # the module zeroes padding itself


class DebertaV2LayerBlock(SharingLayerBlock):
    def shared(self, carry: Carry) -> dict[str, Tensor | None]:  # none without relative attention
        return {REL_EMBEDDINGS: self.encoder.get_rel_embedding(), REL_POS: self.encoder.get_rel_pos(carry.hidden)}

    def call_layer(self, carry: Carry) -> Tensor:
        out, _ = self.layer(carry.hidden, pair_mask(carry.mask), relative_pos=carry.extras.get(REL_POS),
                            rel_embeddings=carry.extras.get(REL_EMBEDDINGS))
        if self.encoder is not None and self.encoder.conv is not None:
            out = self.encoder.conv(carry.hidden, out, carry.mask.long())
        return out


split_deberta = partial(split_sharing, layer_block=DebertaV2LayerBlock, embedding_block=DebertaV2EmbeddingBlock)
