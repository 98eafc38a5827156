from .blocks import BlockGroup, Carry, EmbeddingBlock, LSTMBlock, TransformerBlock, masked_mean
from .encoder import build_blocks, cut_into_groups, load_word_vectors
from .heads import BatchNorm1d, Classifier, Standardizer, make_projection
from .pretrained import HubEmbeddingBlock, HubLayerBlock

__all__ = ["BatchNorm1d", "BlockGroup", "Carry", "Classifier", "EmbeddingBlock", "HubEmbeddingBlock", "HubLayerBlock",
           "LSTMBlock", "Standardizer", "TransformerBlock",
           "build_blocks", "cut_into_groups", "load_word_vectors", "make_projection", "masked_mean"]
