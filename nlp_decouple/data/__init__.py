"""Datasets: loading (Hub, local files, the synthetic default) and tokenisation into padded batches."""
from __future__ import annotations

from ..registry import DATASETS, DatasetSpec, known_names
from .batches import Loaders, build_loaders, make_collator, tokenize_splits
from .loading import TextData, load_text_data
from .probe import ProbeSet, draw_probe_set
from .synthetic import make_synthetic

__all__ = ["DATASETS", "DatasetSpec", "Loaders", "ProbeSet", "TextData", "build_loaders", "draw_probe_set",
           "known_names", "load_text_data", "make_collator", "make_synthetic", "tokenize_splits"]
