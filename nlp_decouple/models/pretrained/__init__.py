"""A pretrained Hub encoder cut into blocks: its embedding module is block 0, each of its layers one block.

The Hub modules themselves run inside the blocks (no re-implementation): the embedding module with the
family's own position and token-type conventions, each layer called as the family's model calls it, with
the attention mask that model builds (``transformers.masking_utils``). What a family's encoder computes
once for all layers (MPNet's relative position bias, DeBERTa's relative embeddings) is computed by the
first layer's block and handed on in the carry. Blocks keep the :mod:`..blocks` interface, so groups,
methods, evaluation and the pipeline treat them like any other. The families: :mod:`.families`.
"""
from .blocks import HubEmbeddingBlock, HubLayerBlock
from .build import build_pretrained_blocks, load_hub_model, reset_index_buffers
from .families import FAMILIES, Family

__all__ = ["FAMILIES", "Family", "HubEmbeddingBlock", "HubLayerBlock", "build_pretrained_blocks", "load_hub_model",
           "reset_index_buffers"]
