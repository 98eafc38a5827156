"""Load a Hub model (or rebuild a saved one's architecture) and cut it into blocks by its family."""
from __future__ import annotations

import torch
from torch import nn

from ...config import ModelConfig
from ...errors import UserError
from .families import FAMILIES, Family


def family_of(model_type: str, name: str) -> Family:
    if model_type not in FAMILIES:
        raise UserError(f"model.pretrained={name!r} has model_type {model_type!r}; model.encoder=pretrained supports "
                        f"{', '.join(FAMILIES)} (deberta-v2 covers DeBERTa v2 and v3, bert MiniLM): pick a checkpoint "
                        "of one of these")
    return FAMILIES[model_type]


@torch.no_grad()
def reset_index_buffers(module: nn.Module) -> None:
    """Recompute a Hub module's own non-persistent index buffers (``from_pretrained`` leaves them unset
    and calls ``_init_weights`` on the module that holds them), as the families' code does."""
    for name, buffer in module.named_buffers(recurse=False):
        if name == "position_ids":
            buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))
        elif name == "token_type_ids":
            buffer.zero_()
        elif name.endswith("inv_freq"):  # rotary frequencies (ModernBERT): the module's own constructor's
            buffer.copy_(getattr(type(module)(module.config), name))


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
    for key in family_of(config.model_type, name).dropout:
        setattr(config, key, cfg.dropout)
    try:
        return AutoModel.from_pretrained(name, config=config)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(f"model.pretrained={name!r}: its weights could not be loaded ({first}); give a directory "
                        "or Hub id that holds model.safetensors or pytorch_model.bin") from None


def _positions(hub_config, embeddings: nn.Module) -> int:
    """Usable positions: RoBERTa-style embeddings (and MPNet's) number real tokens from padding_idx + 1."""
    offset = embeddings.padding_idx + 1 if hasattr(embeddings, "padding_idx") else 0
    return hub_config.max_position_embeddings - offset


def build_pretrained_blocks(cfg: ModelConfig, vocab_size: int, pad_id: int, max_length: int,
                            hub_config: dict | None = None) -> list[nn.Module]:
    """Embedding block + the first ``model.num_layers`` layers (null: all; the count is then written back
    into ``cfg.num_layers``, so the run's groups and saved config hold the resolved number)."""
    hub = load_hub_model(cfg, hub_config)
    config = hub.config
    family = family_of(config.model_type, cfg.pretrained or config.model_type)
    layers = hub.get_submodule(family.layers)
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
    blocks = family.split(hub, list(layers)[: cfg.num_layers], cfg.pooling)
    if cfg.freeze_embeddings:
        blocks[0].requires_grad_(False)
    return blocks
