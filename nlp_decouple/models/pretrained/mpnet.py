"""MPNet (``mpnet``; e.g. sentence-transformers' all-mpnet-base-v2): BERT-like layers that add a relative
position bias to their attention scores, computed once by the Hub's encoder from one table shared by all
layers; here by the first layer's block (:class:`.blocks.SharingLayerBlock`)."""
from __future__ import annotations

from functools import partial

from torch import Tensor

from ..blocks import Carry
from .blocks import SharingLayerBlock, split_sharing

POSITION_BIAS = "mpnet_position_bias"  # carry.extras: (1, heads, T, T), the same for every text


class MPNetLayerBlock(SharingLayerBlock):
    def shared(self, carry: Carry) -> dict[str, Tensor | None]:
        # the bias depends on the length alone: computed for one text, broadcast over the batch
        return {POSITION_BIAS: self.encoder.compute_position_bias(carry.hidden[:1])}

    def call_layer(self, carry: Carry) -> Tensor:
        bias = self.make_mask(config=self.hub_config, inputs_embeds=carry.hidden, attention_mask=carry.mask)
        return self.layer(carry.hidden, attention_mask=bias, position_bias=carry.extras[POSITION_BIAS])[0]


split_mpnet = partial(split_sharing, layer_block=MPNetLayerBlock)
