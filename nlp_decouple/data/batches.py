"""Tokenised splits into padded batches: the training loader (shuffled by a generator re-seeded every
epoch, so an epoch's order is the same after a resume), the evaluation loaders and the probe loader."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..config import Config
from .sampling import ClassGroupedBatchSampler


@dataclass
class Loaders:
    train: DataLoader
    evals: dict[str, DataLoader]  # validation (and test unless eval.test=false)
    probe: DataLoader  # the probe set's training texts (data.probe): linear probes, the standardiser refresh
    shuffle: torch.Generator  # the training order's generator: seed it at each epoch start


def tokenize_splits(splits: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Token ids per text (no padding yet: the collator pads each batch to its longest text)."""

    def encode(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=max_length, return_token_type_ids=False)

    return splits.map(encode, batched=True, remove_columns=["text"], desc="tokenize")


def make_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")


def build_loaders(tokenized: DatasetDict, tokenizer: PreTrainedTokenizerBase, cfg: Config,
                  probe_rows: Sequence[int]) -> Loaders:
    """``probe_rows``: the training rows of the probe set (:func:`nlp_decouple.data.probe.draw_probe_set`)."""
    t, collator = cfg.train, make_collator(tokenizer)
    shuffle = torch.Generator().manual_seed(t.seed)

    def loader(split, batch_size: int, shuffled: bool = False) -> DataLoader:
        return DataLoader(split, batch_size=batch_size, shuffle=shuffled, collate_fn=collator,
                          num_workers=cfg.data.num_workers, generator=shuffle if shuffled else None)

    splits = ("validation", "test") if cfg.eval.test else ("validation",)  # tuning never reads test
    if cfg.data.sampler == "random":
        train = loader(tokenized["train"], t.batch_size, shuffled=True)
    else:  # batches of samples_per_class texts per class, drawn from the same per-epoch generator
        sampler = ClassGroupedBatchSampler(tokenized["train"]["label"], t.batch_size, cfg.data.samples_per_class,
                                           shuffle, balanced=cfg.data.sampler == "class_balanced")
        train = DataLoader(tokenized["train"], batch_sampler=sampler, collate_fn=collator,
                           num_workers=cfg.data.num_workers)
    return Loaders(train=train,
                   evals={name: loader(tokenized[name], t.eval_batch_size) for name in splits},
                   probe=loader(tokenized["train"].select(probe_rows), t.eval_batch_size), shuffle=shuffle)
