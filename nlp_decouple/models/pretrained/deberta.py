"""DeBERTa-v2 and v3 (``deberta-v2``): disentangled attention reads a relative position embedding table
(normalised by the encoder's LayerNorm) and the relative positions, both computed once by the Hub's
encoder for all layers; some v2 checkpoints also add a convolution after the first layer. Here the first
layer's block holds those encoder parts (the Hub's encoder module emptied of its layers), runs them and
carries the table and positions to the later layers. BP trains the one table from every layer, as the
Hub model does; under a decoupled method it learns with the first layer's group, and later groups read it
detached like the rest of the hand-off."""
from __future__ import annotations

from torch import Tensor, nn

from ..blocks import Carry
from .blocks import HubEmbeddingBlock, HubLayerBlock, with_extras

REL_EMBEDDINGS = "deberta_rel_embeddings"  # carry.extras: (2 * buckets, hidden), after the encoder's LayerNorm
REL_POS = "deberta_rel_pos"  # carry.extras: (1, T, T) long, bucketed relative positions


def pair_mask(mask: Tensor) -> Tensor:
    """``DebertaV2Encoder.get_attention_mask`` of a (B, T) mask: (B, 1, T, T), query and key both real."""
    return (mask[:, None, None, :] & mask[:, None, :, None])


class DebertaV2EmbeddingBlock(HubEmbeddingBlock):
    def embed_ids(self, carry: Carry) -> Tensor:
        return self.embeddings(input_ids=carry.hidden, mask=carry.mask)  # the module zeroes padding itself


class DebertaV2LayerBlock(HubLayerBlock):
    def __init__(self, layer: nn.Module, hub_config, dim: int, pooling: str, encoder: nn.Module | None = None):
        super().__init__(layer, hub_config, dim, pooling)
        self.encoder = encoder  # first layer only: rel_embeddings, their LayerNorm and the optional conv

    def forward(self, carry: Carry) -> Carry:
        if self.encoder is not None:
            carry = with_extras(carry, **{REL_EMBEDDINGS: self.encoder.get_rel_embedding(),
                                          REL_POS: self.encoder.get_rel_pos(carry.hidden)})
        return super().forward(carry)

    def call_layer(self, carry: Carry) -> Tensor:
        out, _ = self.layer(carry.hidden, pair_mask(carry.mask), relative_pos=carry.extras.get(REL_POS),
                            rel_embeddings=carry.extras.get(REL_EMBEDDINGS))
        if self.encoder is not None and self.encoder.conv is not None:
            out = self.encoder.conv(carry.hidden, out, carry.mask.long())
        return out


def split_deberta(hub: nn.Module, layers: list[nn.Module], pooling: str) -> list[nn.Module]:
    config, dim = hub.config, hub.config.hidden_size
    encoder = hub.encoder
    encoder.layer = nn.ModuleList()  # the layers become blocks of their own
    return [DebertaV2EmbeddingBlock(hub.embeddings, config, dim),
            *(DebertaV2LayerBlock(layer, config, dim, pooling, encoder if i == 0 else None)
              for i, layer in enumerate(layers))]
