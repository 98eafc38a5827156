"""Inference on raw texts with a saved model: batching, every exit's logits, adaptive early exit."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .errors import UserError
from .hf import DecoupledForSequenceClassification, load_model_dir


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory (its best model)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{str(path)!r} not found: give a saved model directory or a run directory")
    if not (path / "config.json").is_file() and (path / "best" / "config.json").is_file():
        return path / "best"
    return path


def load_for_inference(path: str | Path, device: str | None = None
                       ) -> tuple[DecoupledForSequenceClassification, PreTrainedTokenizerBase]:
    model, tok = load_model_dir(resolve_model_dir(path))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model, tok


def read_lines(path: Path) -> list[str]:
    """One text per line; a trailing newline (or several) is not an empty text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def check_texts(texts: Sequence[str], source: str) -> None:
    if not texts:
        raise UserError(f"{source}: no texts to predict; give at least one non-empty text")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{source}: text {i + 1} is empty; remove it or fill it in")


def encoded_batches(tok: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, batch_size: int,
                    device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenised exactly as in training (truncation at the model's length), padded per batch."""
    for start in range(0, len(texts), batch_size):
        enc = tok(list(texts[start:start + batch_size]), truncation=True, max_length=max_length, padding="longest",
                  return_token_type_ids=False, return_tensors="pt")
        yield {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def all_exit_logits(model: DecoupledForSequenceClassification, tok: PreTrainedTokenizerBase,
                    texts: Sequence[str], batch_size: int = 64) -> dict[int, np.ndarray]:
    """Group index -> (N, C) logits of every exit of the method (the last is the model's prediction)."""
    chunks: dict[int, list[np.ndarray]] = {}
    for batch in encoded_batches(tok, texts, model.config.max_seq_length, batch_size, model.device):
        for group, logits in model.exit_logits(batch["input_ids"], batch["attention_mask"]).items():
            chunks.setdefault(group, []).append(logits.float().cpu().numpy())
    return {g: np.concatenate(c) for g, c in chunks.items()}


@torch.no_grad()
def predict_texts(model: DecoupledForSequenceClassification, tok: PreTrainedTokenizerBase, texts: Sequence[str],
                  batch_size: int = 64, exit_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and the group that answered each text (the last one unless early exit)."""
    if exit_threshold is not None and not model.has_early_exits:
        raise UserError(f"method {model.config.method.get('name')!r} has no early exits (only the last group "
                        "classifies): drop --exit-threshold")
    probs, groups = [], []
    for batch in encoded_batches(tok, texts, model.config.max_seq_length, batch_size, model.device):
        pred = model.predict_adaptive(batch["input_ids"], batch["attention_mask"], exit_threshold)
        probs.append(pred.probs.cpu().numpy())
        groups.append(pred.group.cpu().numpy())
    return np.concatenate(probs), np.concatenate(groups)
