"""A pretrained Hub encoder cut into blocks: its embedding module is block 0, each of its layers one block.

The Hub modules themselves run inside the blocks (no re-implementation): the embedding module with the
family's own position and token-type conventions, each layer with the attention mask its family builds
(``transformers.masking_utils.create_bidirectional_mask``, as the Hub model's own forward does). Blocks
keep the :mod:`.blocks` interface, so groups, methods, evaluation and the pipeline treat them like any other.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from .blocks import Carry, masked_mean

# model_type -> (family, attribute path of the layer list, config keys of hidden / attention dropout)
FAMILIES = {
    "bert": ("BERT", "encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob")),
    "roberta": ("BERT", "encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob")),
    "xlm-roberta": ("BERT", "encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob")),
    "electra": ("BERT", "encoder.layer", ("hidden_dropout_prob", "attention_probs_dropout_prob")),
    "distilbert": ("DistilBERT", "transformer.layer", ("dropout", "attention_dropout")),
}
SUPPORTED = ("the BERT layout (bert, roberta, xlm-roberta, electra; MiniLM checkpoints are bert) "
             "and distilbert")


def _family(model_type: str, name: str) -> tuple[str, str, tuple[str, str]]:
    if model_type not in FAMILIES:
        raise UserError(f"model.pretrained={name!r} has model_type {model_type!r}; model.encoder=pretrained supports "
                        f"{SUPPORTED}: pick a checkpoint of one of these")
    return FAMILIES[model_type]


def _bidirectional_mask():
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        import transformers
        raise UserError("model.encoder=pretrained needs transformers 5 (its layers take the mask "
                        f"masking_utils.create_bidirectional_mask builds; installed {transformers.__version__}): "
                        "pip install -U transformers") from None
    return create_bidirectional_mask


@torch.no_grad()
def reset_index_buffers(module: nn.Module) -> None:
    """Recompute a Hub embedding module's own non-persistent index buffers (``from_pretrained`` leaves
    them unset and calls ``_init_weights`` on the module that holds them), as the families' code does."""
    for name, buffer in module.named_buffers(recurse=False):
        if name == "position_ids":
            buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))
        elif name == "token_type_ids":
            buffer.zero_()


class HubEmbeddingBlock(nn.Module):
    """The Hub model's embedding module (plus ELECTRA's projection to the hidden size); pooled as a
    masked mean. Token types are the family's default (all 0, one text); positions come from the module."""

    def __init__(self, embeddings: nn.Module, project: nn.Module | None, hub_config, dim: int):
        super().__init__()
        self.embeddings = embeddings
        self.project = project
        self.hub_config = hub_config  # travels into the saved model's config.json (see nlp_decouple.hf)
        self.out_dim = self.pool_dim = dim

    @property
    def embed(self) -> nn.Embedding:
        """The word embedding (what ``StagedClassifier.embedding`` names for freezing and word vectors)."""
        return self.embeddings.word_embeddings

    def forward(self, carry: Carry) -> Carry:
        x = self.embeddings(input_ids=carry.hidden)
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
        self.make_mask = _bidirectional_mask()  # resolved here: an old transformers fails at build time
        self.pooling = pooling
        self.out_dim = self.pool_dim = dim

    def forward(self, carry: Carry) -> Carry:
        hidden, mask = carry.hidden, carry.mask
        bias = self.make_mask(config=self.hub_config, inputs_embeds=hidden, attention_mask=mask)
        out = self.layer(hidden, attention_mask=bias)
        out = out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return tuples
        # padded positions are never attended to; zero them as the other encoders do
        return carry.with_(hidden=out.masked_fill(~mask.unsqueeze(-1), 0.0))

    def pool(self, carry: Carry) -> Tensor:
        if self.pooling == "cls":
            return carry.hidden[:, 0]
        return masked_mean(carry.hidden, carry.mask)


def load_hub_model(cfg: ModelConfig, hub_config: dict | None = None) -> nn.Module:
    """The Hub model named by ``model.pretrained`` with ``model.dropout`` in its layers, or, from a saved
    model's ``hub_config`` (a config dict), the same architecture randomly initialised (the saved state
    is loaded over it): building a saved model needs neither the Hub nor the original weights."""
    from transformers import AutoConfig, AutoModel

    if hub_config is not None:
        fields = dict(hub_config)
        return AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    name = cfg.pretrained
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(f"model.pretrained={name!r} could not be loaded ({first}); give a local model directory, "
                        "or for offline use a Hub cache that holds it (HF_HUB_CACHE=... HF_HUB_OFFLINE=1)") from None
    _, _, dropout_keys = _family(config.model_type, name)
    for key in dropout_keys:
        setattr(config, key, cfg.dropout)
    try:
        return AutoModel.from_pretrained(name, config=config)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(f"model.pretrained={name!r}: its weights could not be loaded ({first}); give a directory "
                        "or Hub id that holds model.safetensors or pytorch_model.bin") from None


def _positions(hub_config, embeddings: nn.Module) -> int:
    """Usable positions: RoBERTa-style embeddings number real tokens from padding_idx + 1."""
    offset = embeddings.padding_idx + 1 if hasattr(embeddings, "padding_idx") else 0
    return hub_config.max_position_embeddings - offset


def build_pretrained_blocks(cfg: ModelConfig, vocab_size: int, pad_id: int, max_length: int,
                            hub_config: dict | None = None) -> list[nn.Module]:
    """Embedding block + the first ``model.num_layers`` layers (null: all; the count is then written back
    into ``cfg.num_layers``, so the run's groups and saved config hold the resolved number)."""
    hub = load_hub_model(cfg, hub_config)
    config = hub.config
    _, layers_path, _ = _family(config.model_type, cfg.pretrained or config.model_type)
    layers = hub.get_submodule(layers_path)
    name = cfg.pretrained or "the saved model"
    if cfg.num_layers is None:
        cfg.num_layers = len(layers)
    if cfg.num_layers > len(layers):
        raise UserError(f"model.num_layers={cfg.num_layers} but {name!r} has {len(layers)} layers: use 1..{len(layers)} "
                        "or null (all)")
    if vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer has {vocab_size} tokens but {name!r} embeds {config.vocab_size}: use the "
                        "model's own tokenizer (leave tokenizer.name and tokenizer.train unset)")
    embeddings = hub.get_submodule("embeddings")
    room = _positions(config, embeddings)
    if max_length > room:
        raise UserError(f"data.max_length={max_length} exceeds the {room} positions of {name!r}: set "
                        f"data.max_length={room} or less")
    if hasattr(embeddings, "padding_idx") and pad_id != embeddings.padding_idx:
        # these families number positions by counting the non-padding ids
        raise UserError(f"the tokenizer pads with id {pad_id} but {name!r} expects {embeddings.padding_idx}: use the "
                        "model's own tokenizer (leave tokenizer.name and tokenizer.train unset)")
    config.num_hidden_layers = cfg.num_layers  # the saved config describes only the layers kept
    dim = config.hidden_size
    blocks: list[nn.Module] = [HubEmbeddingBlock(embeddings, getattr(hub, "embeddings_project", None), config, dim)]
    blocks += [HubLayerBlock(layer, config, dim, cfg.pooling) for layer in list(layers)[: cfg.num_layers]]
    if cfg.freeze_embeddings:
        blocks[0].requires_grad_(False)
    return blocks
