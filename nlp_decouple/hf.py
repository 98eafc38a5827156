"""Trained models in Hugging Face form: ``save_pretrained`` / ``from_pretrained`` with a config.json that
holds everything needed to rebuild the model (no recipe, no training code's Config), any method's
inference path, and adaptive early exit for methods with exits.

    from nlp_decouple.hf import DecoupledForSequenceClassification
    model = DecoupledForSequenceClassification.from_pretrained("runs/agnews-.../best")

``import nlp_decouple.hf`` also registers the classes with the Auto* factories, so
``AutoModelForSequenceClassification.from_pretrained(dir)`` and ``transformers.pipeline`` work too. A text
longer than the model's length is cut inside the model as the tokenizer cuts it in training (its first
tokens and its closing special tokens), so a pipeline called without ``truncation=True`` sees what
``nlp-decouple predict`` sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.modeling_outputs import SequenceClassifierOutput

from .config import Config, config_from_dict
from .errors import UserError
from .registry import METHODS
from .tokenization import truncation_layout
from .classifier import StagedClassifier
from .models.blocks import EmbeddingBlock, sinusoidal_table
from .models.pretrained import HubEmbeddingBlock, reset_index_buffers


class DecoupledTextConfig(PretrainedConfig):
    """The encoder (``encoder``: ModelConfig fields) and the method (``method``: MethodConfig fields) as
    plain dicts, plus the vocabulary size, padding id, sequence length, label names, how the tokenizer cuts
    a longer text (``truncation``: its side and the special tokens it puts before and after a text, e.g.
    BERT's ``[CLS] ... [SEP]``: right, 1, 1) and, for a pretrained encoder, the inner Hub model's config
    (``pretrained_config``)."""

    model_type = "nlp_decouple"

    def __init__(self, encoder: dict | None = None, method: dict | None = None, vocab_size: int = 0,
                 pad_token_id: int = 0, max_seq_length: int = 128, pretrained_config: dict | None = None,
                 truncation: dict | None = None, **kwargs):
        self.encoder = dict(encoder or {})
        self.method = dict(method or {})
        # encoder=pretrained: the inner Hub model's config (only the layers kept), so loading builds it
        # from this file alone: no Hub access, no original weights
        self.pretrained_config = pretrained_config
        self.vocab_size = vocab_size
        self.max_seq_length = max_seq_length
        self.truncation = truncation  # None (saved before it was recorded): texts are not cut
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def run_config(self) -> Config:
        """The (validated) model and method sections as the training code's Config."""
        return config_from_dict({"model": self.encoder, "method": self.method})


@dataclass
class ExitPrediction:
    """Per text: the answering exit's probabilities and the global index of the group that answered."""
    probs: Tensor  # (N, C)
    group: Tensor  # (N,) long


class DecoupledForSequenceClassification(PreTrainedModel):
    config_class = DecoupledTextConfig
    base_model_prefix = "staged"
    main_input_name = "input_ids"

    def __init__(self, config: DecoupledTextConfig):
        super().__init__(config)
        self.staged = StagedClassifier.from_config(config.run_config(), config.vocab_size, config.pad_token_id,
                                                   config.num_labels, config.max_seq_length,
                                                   hub_config=config.pretrained_config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """The blocks and heads initialise their parameters when built, and loading overwrites them; only
        the non-persistent buffers that ``from_pretrained`` leaves empty are recomputed: the sinusoidal
        table, and the position and token-type ids of a pretrained encoder's Hub embedding module."""
        if isinstance(module, EmbeddingBlock) and module.positional == "sinusoidal":
            module.position_table.copy_(sinusoidal_table(*module.position_table.shape))
        reset_index_buffers(module)

    @classmethod
    def from_staged(cls, staged: StagedClassifier, cfg: Config, vocab_size: int, pad_token_id: int,
                    max_seq_length: int, label_names: list[str]) -> "DecoupledForSequenceClassification":
        """Wrap a trained model (its weights shared, not copied) for ``save_pretrained``."""
        encoder = {**cfg.model.model_dump(), "word_vectors": None}  # the vectors live in the weights
        first = staged.stages[0].groups[0].blocks[0]
        hub = first.hub_config.to_dict() if isinstance(first, HubEmbeddingBlock) else None
        config = DecoupledTextConfig(
            encoder=encoder, method=cfg.method.model_dump(), vocab_size=vocab_size,
            pad_token_id=pad_token_id, max_seq_length=max_seq_length, pretrained_config=hub,
            id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
        model = cls.__new__(cls)  # not cls(config): that would build (and randomly initialise) a second model
        PreTrainedModel.__init__(model, config)
        model.staged = staged
        model.post_init()
        return model

    @property
    def exit_groups(self) -> list[int]:
        """Global group index at the end of each stage: where that stage's exit (if any) reads."""
        return self.staged.stage_ends()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        input_ids, attention_mask = self.fit_length(input_ids, attention_mask)
        logits = self.staged(input_ids, attention_mask)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def fit_length(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The inputs as training saw them: texts longer than ``max_seq_length`` tokens cut as the tokenizer
        cuts them (see ``cut_like_tokenizer``); a missing mask read from the padding id."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        cut, length = self.config.truncation, self.config.max_seq_length
        if cut is None or input_ids.shape[1] <= length:
            return input_ids, attention_mask
        head = length - cut["after"] if cut["side"] == "right" else cut["before"]
        return cut_like_tokenizer(input_ids, attention_mask, length, head)

    @torch.no_grad()
    def exit_logits(self, input_ids: Tensor, attention_mask: Tensor) -> dict[int, Tensor]:
        """Logits of every exit the method has (group index -> (N, C)); the last one is the prediction."""
        input_ids, attention_mask = self.fit_length(input_ids, attention_mask)
        outs = self.staged.run(input_ids, attention_mask)
        return {g: out.logits for g, out in zip(self.exit_groups, outs) if out.logits is not None}

    @torch.no_grad()
    def predict_adaptive(self, input_ids: Tensor, attention_mask: Tensor,
                         threshold: float | None = None) -> ExitPrediction:
        """Stage by stage: a text is answered by the first exit whose top probability reaches
        ``threshold`` (the last exit answers the rest); stages stop running once every text of the batch
        has answered, so confident batches skip the upper groups. ``None``: the final exit answers all."""
        input_ids, attention_mask = self.fit_length(input_ids, attention_mask)
        n = input_ids.shape[0]
        probs = torch.zeros(n, self.config.num_labels, device=input_ids.device)
        group = torch.full((n,), -1, dtype=torch.long, device=input_ids.device)
        stages, outs = list(self.staged.stages), []
        for k, out in enumerate(self.staged.iter_stages(input_ids, attention_mask)):
            outs.append(out)
            if self.staged.infer is not None:  # e.g. AL: decode this stage's bridge output to logits
                outs = self.staged.infer(stages[: k + 1], outs)
            logits = outs[-1].logits
            last = k == len(stages) - 1
            if logits is None or (threshold is None and not last):
                continue
            p = logits.float().softmax(-1).to(probs.device)
            take = group.eq(-1) & (p.max(-1).values.ge(threshold) if not last else torch.ones_like(group, dtype=torch.bool))
            probs[take], group[take] = p[take], self.exit_groups[k]
            if bool(group.ge(0).all()):
                break
        return ExitPrediction(probs, group)

    @property
    def has_early_exits(self) -> bool:
        """Whether the method has exits before the last group (early_exit, deinforeg, al)."""
        return len(self.exit_groups) > 1 and METHODS[self.config.method["name"]].has_exits


def cut_like_tokenizer(input_ids: Tensor, attention_mask: Tensor, length: int, head: int) -> tuple[Tensor, Tensor]:
    """(N, T) inputs, T > ``length``, to (N, length): a text of more than ``length`` real tokens keeps its
    first ``head`` and its last ``length - head`` of them, which is what the tokenizer's truncation keeps
    (right side: the opening specials and the text's start, then the closing specials); shorter texts are
    kept whole. Padding may be on either side; the result is padded on the right."""
    mask = attention_mask.bool()
    order = torch.argsort((~mask).int(), dim=1, stable=True)  # each row's real tokens first, in order
    ids, mask = input_ids.gather(1, order), mask.gather(1, order)
    real = mask.sum(1, keepdim=True)
    j = torch.arange(length, device=ids.device).expand(ids.shape[0], -1)
    source = torch.where((real > length) & (j >= head), real - length + j, j)
    return ids.gather(1, source), mask.gather(1, source)


def save_model_dir(model: DecoupledForSequenceClassification, tokenizer: PreTrainedTokenizerBase,
                   directory: Path) -> None:
    """The model and its tokenizer, which is saved with the model's length as ``model_max_length`` (so
    ``truncation=True`` cuts where training did); the model records how that tokenizer cuts a text."""
    model.config.truncation = truncation_layout(tokenizer)
    tokenizer.model_max_length = model.config.max_seq_length
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def load_model_dir(directory: str | Path) -> tuple[DecoupledForSequenceClassification, PreTrainedTokenizerBase]:
    """A saved model and its tokenizer, ready for inference (eval mode)."""
    from transformers import AutoTokenizer

    path = Path(directory)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        hint = " (a run directory? its model is in RUN_DIR/best)" if (path / "best").is_dir() else ""
        raise UserError(f"{str(path)!r} is not a saved model: it needs config.json and model.safetensors{hint}")
    model = DecoupledForSequenceClassification.from_pretrained(str(path))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))


AutoConfig.register(DecoupledTextConfig.model_type, DecoupledTextConfig)
AutoModelForSequenceClassification.register(DecoupledTextConfig, DecoupledForSequenceClassification)
