"""MPNet (``mpnet``; e.g. sentence-transformers' all-mpnet-base-v2): BERT-like layers that add a relative
position bias to their attention scores. The Hub's encoder computes that bias once, from one table shared
by all layers; here the first layer's block holds the table (the Hub's encoder module emptied of its
layers), computes the bias and carries it to the later layers. BP trains the one table from every layer,
as the Hub model does; under a decoupled method it learns with the first layer's group, and later groups
read it detached like the rest of the hand-off."""
from __future__ import annotations

from torch import Tensor, nn

from ..blocks import Carry
from .blocks import HubEmbeddingBlock, HubLayerBlock, with_extras

POSITION_BIAS = "mpnet_position_bias"  # carry.extras: (1, heads, T, T), the same for every text


class MPNetLayerBlock(HubLayerBlock):
    def __init__(self, layer: nn.Module, hub_config, dim: int, pooling: str, encoder: nn.Module | None = None):
        super().__init__(layer, hub_config, dim, pooling)
        self.encoder = encoder  # first layer only: the Hub's MPNetEncoder holding relative_attention_bias

    def forward(self, carry: Carry) -> Carry:
        if self.encoder is not None:  # the bias depends on the length alone: computed for one text
            carry = with_extras(carry, **{POSITION_BIAS: self.encoder.compute_position_bias(carry.hidden[:1])})
        return super().forward(carry)

    def call_layer(self, carry: Carry) -> Tensor:
        bias = self.make_mask(config=self.hub_config, inputs_embeds=carry.hidden, attention_mask=carry.mask)
        return self.layer(carry.hidden, attention_mask=bias, position_bias=carry.extras[POSITION_BIAS])[0]


def split_mpnet(hub: nn.Module, layers: list[nn.Module], pooling: str) -> list[nn.Module]:
    config, dim = hub.config, hub.config.hidden_size
    encoder = hub.encoder
    encoder.layer = nn.ModuleList()  # the layers become blocks of their own
    return [HubEmbeddingBlock(hub.embeddings, config, dim),
            *(MPNetLayerBlock(layer, config, dim, pooling, encoder if i == 0 else None)
              for i, layer in enumerate(layers))]
