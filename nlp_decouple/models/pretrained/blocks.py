"""The generic Hub blocks: a Hub model's embedding module, and one of its layers called as its family's
model calls it (the BERT layout's call by default; a family with more to pass subclasses the layer block)."""
from __future__ import annotations

import abc

from torch import Tensor, nn

from ..blocks import Carry, masked_mean


def bidirectional_mask():
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        import transformers

        from ...errors import UserError
        raise UserError("model.encoder=pretrained needs transformers 5 (its layers take the mask "
                        f"masking_utils.create_bidirectional_mask builds; installed {transformers.__version__}): "
                        "pip install -U transformers") from None
    return create_bidirectional_mask


class HubEmbeddingBlock(nn.Module):
    """The Hub model's embedding module (plus ELECTRA's projection to the hidden size); pooled as a
    masked mean. Token types are the family's default (all 0, one text); positions come from the module."""

    def __init__(self, embeddings: nn.Module, hub_config, dim: int, word: str = "word_embeddings",
                 project: nn.Module | None = None):
        super().__init__()
        self.embeddings = embeddings
        self.project = project
        self.word = word  # the attribute of `embeddings` holding the word embedding
        self.hub_config = hub_config  # travels into the saved model's config.json (see nlp_decouple.hf)
        self.out_dim = self.pool_dim = dim

    @property
    def embed(self) -> nn.Embedding:
        """The word embedding (what ``StagedClassifier.embedding`` names for freezing and word vectors)."""
        return getattr(self.embeddings, self.word)

    def embed_ids(self, carry: Carry) -> Tensor:
        return self.embeddings(input_ids=carry.hidden)

    def forward(self, carry: Carry) -> Carry:
        x = self.embed_ids(carry)
        if self.project is not None:
            x = self.project(x)
        return carry.with_(hidden=x)

    def pool(self, carry: Carry) -> Tensor:
        return masked_mean(carry.hidden, carry.mask)


class HubLayerBlock(nn.Module):
    """One Hub encoder layer, called with its family's attention mask; pooled as a masked mean or the
    first token ([CLS] / <s>)."""

    def __init__(self, layer: nn.Module, hub_config, dim: int, pooling: str = "mean"):
        super().__init__()
        self.layer = layer
        self.hub_config = hub_config
        self.make_mask = bidirectional_mask()  # resolved here: an old transformers fails at build time
        self.pooling = pooling
        self.out_dim = self.pool_dim = dim

    def call_layer(self, carry: Carry) -> Tensor:
        bias = self.make_mask(config=self.hub_config, inputs_embeds=carry.hidden, attention_mask=carry.mask)
        out = self.layer(carry.hidden, attention_mask=bias)
        return out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return tuples

    def forward(self, carry: Carry) -> Carry:
        out = self.call_layer(carry)
        # padded positions are never attended to; zero them as the other encoders do
        return carry.with_(hidden=out.masked_fill(~carry.mask.unsqueeze(-1), 0.0))

    def pool(self, carry: Carry) -> Tensor:
        if self.pooling == "cls":
            return carry.hidden[:, 0]
        return masked_mean(carry.hidden, carry.mask)


class SharingLayerBlock(HubLayerBlock, abc.ABC):
    """A layer of a family whose encoder computes something once for all its layers (a relative position
    table): the first layer's block holds the Hub's encoder module emptied of its layers, computes that
    (:meth:`shared`) and hands it on in ``carry.extras``. BP trains the encoder's tables from every layer,
    as the Hub model does; a decoupled method trains them with the first layer's group, and later groups
    read them detached like the rest of the hand-off."""

    def __init__(self, layer: nn.Module, hub_config, dim: int, pooling: str, encoder: nn.Module | None = None):
        super().__init__(layer, hub_config, dim, pooling)
        self.encoder = encoder  # first layer only

    @abc.abstractmethod
    def shared(self, carry: Carry) -> dict[str, Tensor | None]:
        """What the encoder computes once for every layer, by the name the layers read it under."""

    def forward(self, carry: Carry) -> Carry:
        if self.encoder is not None:
            found = {k: v for k, v in self.shared(carry).items() if v is not None}
            carry = carry.with_(extras={**carry.extras, **found})
        return super().forward(carry)


def split_sharing(hub: nn.Module, layers: list[nn.Module], pooling: str, layer_block: type[SharingLayerBlock],
                  embedding_block: type[HubEmbeddingBlock] = HubEmbeddingBlock) -> list[nn.Module]:
    """The embedding module, then each layer, the first with the encoder (see :class:`SharingLayerBlock`)."""
    config, dim = hub.config, hub.config.hidden_size
    encoder = hub.encoder
    encoder.layer = nn.ModuleList()  # its layers become blocks of their own
    return [embedding_block(hub.embeddings, config, dim),
            *(layer_block(layer, config, dim, pooling, encoder if i == 0 else None) for i, layer in enumerate(layers))]


def split_bert(hub: nn.Module, layers: list[nn.Module], pooling: str) -> list[nn.Module]:
    """The BERT layout and DistilBERT: the embedding module (ELECTRA: and its projection), then each layer."""
    config, dim = hub.config, hub.config.hidden_size
    blocks: list[nn.Module] = [HubEmbeddingBlock(hub.embeddings, config, dim,
                                                 project=getattr(hub, "embeddings_project", None))]
    return blocks + [HubLayerBlock(layer, config, dim, pooling) for layer in layers]
