"""The Hub families ``model.encoder=pretrained`` takes, by the checkpoint's ``model_type``. Adding one: a
module with its blocks and split (see :mod:`.mpnet` for a family whose layers take more than a mask) and a
row here."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .blocks import split_bert
from .deberta import split_deberta
from .modernbert import split_modernbert
from .mpnet import split_mpnet


@dataclass(frozen=True)
class Family:
    layers: str  # attribute path of the Hub model's layer list
    dropout: tuple[str, ...]  # the config's dropout rates that model.dropout replaces
    # (Hub model, the layers kept, model.pooling) -> the embedding block, then one block per layer
    split: Callable[[nn.Module, list[nn.Module], str], list[nn.Module]] = split_bert


_BERT = Family("encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob"))
FAMILIES: dict[str, Family] = {
    "bert": _BERT,  # MiniLM checkpoints are bert
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "distilbert": Family("transformer.layer", ("dropout", "attention_dropout")),
    "deberta-v2": Family("encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob"), split_deberta),
    "mpnet": Family("encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob"), split_mpnet),
    "modernbert": Family("layers", ("embedding_dropout", "attention_dropout", "mlp_dropout"), split_modernbert),
}
