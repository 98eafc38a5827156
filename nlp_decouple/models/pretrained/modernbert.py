"""ModernBERT (``modernbert``): pre-norm layers with rotary position embeddings, alternating global and
local (sliding window) attention, and a final LayerNorm after the last layer. Each layer's block holds its
own copy of the Hub's rotary module (buffers only, nothing to train) and builds the mask its layer type
takes; the final norm belongs to the last kept layer's block, as in the Hub model cut to that many layers,
so earlier groups pool the un-normalised residual stream."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..blocks import Carry
from .blocks import HubEmbeddingBlock, HubLayerBlock


class ModernBertLayerBlock(HubLayerBlock):
    def __init__(self, layer: nn.Module, hub_config, dim: int, pooling: str, rotary: nn.Module,
                 final_norm: nn.Module | None = None):
        super().__init__(layer, hub_config, dim, pooling)
        self.rotary = rotary
        self.final_norm = final_norm
        if layer.attention_type == "sliding_attention":
            from transformers.masking_utils import create_bidirectional_sliding_window_mask
            self.make_mask = create_bidirectional_sliding_window_mask

    def call_layer(self, carry: Carry) -> Tensor:
        hidden = carry.hidden
        bias = self.make_mask(config=self.hub_config, inputs_embeds=hidden, attention_mask=carry.mask)
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        out = self.layer(hidden, attention_mask=bias,
                         position_embeddings=self.rotary(hidden, positions, self.layer.attention_type))
        return out if self.final_norm is None else self.final_norm(out)


def split_modernbert(hub: nn.Module, layers: list[nn.Module], pooling: str) -> list[nn.Module]:
    config, dim = hub.config, hub.config.hidden_size
    config.layer_types = config.layer_types[: len(layers)]  # the saved config describes only the layers kept
    last = len(layers) - 1
    return [HubEmbeddingBlock(hub.embeddings, config, dim, word="tok_embeddings"),
            *(ModernBertLayerBlock(layer, config, dim, pooling, copy.deepcopy(hub.rotary_emb),
                                   hub.final_norm if i == last else None) for i, layer in enumerate(layers))]
