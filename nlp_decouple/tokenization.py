"""Tokenizers: a Hub/local one through AutoTokenizer, or one trained on the training split."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .config import TokenizerConfig
from .errors import UserError

log = logging.getLogger(__name__)
SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}


def load_pretrained_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if trust_remote_code:
        warnings.warn(f"tokenizer.trust_remote_code=true: code from {name!r} will run on this machine")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(
            f"tokenizer {name!r} could not be loaded ({first}); give a local tokenizer directory, or "
            "for offline use a Hub cache that holds it (HF_HUB_CACHE=... HF_HUB_OFFLINE=1), or train "
            "one with tokenizer.train=wordpiece"
        ) from None
    if tok.pad_token is None:  # GPT-style tokenizers have none; padding needs one
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a WordPiece or word-level tokenizer on ``texts`` (the training split only)."""
    specials = list(SPECIALS.values())
    if cfg.train == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=specials, show_progress=False)
    else:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=specials, show_progress=False)
    steps = [normalizers.NFD(), normalizers.StripAccents()]
    if cfg.lowercase:
        steps.insert(0, normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def build_tokenizer(cfg: TokenizerConfig, train_texts: Iterable[str] | None) -> PreTrainedTokenizerBase:
    if cfg.train is not None:
        if train_texts is None:
            raise ValueError("training a tokenizer needs the training texts")
        return train_tokenizer(train_texts, cfg)
    if cfg.name is None:
        raise UserError("no tokenizer: set tokenizer.name=<Hub id or directory> or tokenizer.train=wordpiece")
    return load_pretrained_tokenizer(cfg.name, cfg.trust_remote_code)


def save_tokenizer(tok: PreTrainedTokenizerBase, directory: Path) -> None:
    tok.save_pretrained(str(directory))


def truncation_layout(tok: PreTrainedTokenizerBase) -> dict:
    """How ``tok`` cuts a long text: the side it drops tokens from and the special tokens it puts before
    and after a single text (found by encoding one with and without them)."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    before = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return {"side": tok.truncation_side, "before": before, "after": len(full) - len(plain) - before}
