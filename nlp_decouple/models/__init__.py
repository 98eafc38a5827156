from .blocks import BlockGroup, Carry, EmbeddingBlock, LSTMBlock, TransformerBlock, masked_mean
from .encoder import build_blocks, cut_into_groups, load_word_vectors
from .heads import BatchNorm1d, Classifier, make_projection

__all__ = ["BatchNorm1d", "BlockGroup", "Carry", "Classifier", "EmbeddingBlock", "LSTMBlock", "TransformerBlock",
           "build_blocks", "cut_into_groups", "load_word_vectors", "make_projection", "masked_mean"]
