"""Datasets: registry, loading, the synthetic default and tokenisation into padded batches."""
from __future__ import annotations

from datasets import DatasetDict
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from .loading import TextData, load_text_data
from ..registry import DATASETS, DatasetSpec, known_names
from .synthetic import make_synthetic


def tokenize_splits(splits: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Token ids per text (no padding yet: the collator pads each batch to its longest text)."""

    def encode(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=max_length, return_token_type_ids=False)

    return splits.map(encode, batched=True, remove_columns=["text"], desc="tokenize")


def make_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")


__all__ = ["DATASETS", "DatasetSpec", "TextData", "known_names", "load_text_data", "make_synthetic",
           "tokenize_splits", "make_collator"]
