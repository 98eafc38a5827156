"""Load a dataset (Hub, local folder or files, synthetic), normalise it to ``text``/``label`` columns,
put the training split in content order, take the source's validation split (or carve a stratified one
from train), cap sizes and add optional label noise."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict

from ..config import DataConfig
from ..errors import UserError
from ..registry import DATASETS, DatasetSpec, known_names
from .synthetic import make_synthetic

log = logging.getLogger(__name__)

VALIDATION_SPLIT = "validation"  # used as validation when the source has it (and it is not the test split)
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class TextData:
    splits: DatasetDict  # train / validation / test, columns text (str) and label (ClassLabel)
    label_names: list[str]
    max_length: int
    stats: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _spec(cfg: DataConfig) -> DatasetSpec:
    if cfg.name == "custom":
        return DatasetSpec(None, ("text",), "label", (), 128)
    if cfg.name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.name!r}: use one of {', '.join(known_names())} "
                        "(custom needs data.path)")
    return DATASETS[cfg.name]


def _wanted(names: list[str], spec: DatasetSpec, with_test: bool) -> list[str]:
    """The source's splits to read: all but its test split when that is not wanted (and not train)."""
    train = spec.train_split if spec.train_split in names else names[0]
    return [n for n in names if with_test or n != spec.test_split or n == train]


def _load_files(path: Path, test_path: str | None, with_test: bool) -> tuple[DatasetDict, list[str]]:
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"data.path {str(path)!r}: unsupported file type {path.suffix!r}; "
                        f"use one of {', '.join(sorted(FILE_BUILDERS))} or a dataset folder")
    files = {"train": str(path)}
    if test_path is not None:
        if not Path(test_path).is_file():
            raise UserError(f"data.test_path {test_path!r} not found: give an existing file")
        files["test"] = test_path
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    wanted = {k: v for k, v in files.items() if with_test or k != "test"}
    return datasets.load_dataset(builder, data_files=wanted, **kwargs), list(files)


def _load_saved(path: Path, spec: DatasetSpec, with_test: bool) -> tuple[DatasetDict, list[str]]:
    """A save_to_disk folder: a DatasetDict (each split its own folder, read only if wanted) or one Dataset."""
    if not (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return (loaded, list(loaded)) if isinstance(loaded, DatasetDict) else (DatasetDict(train=loaded), ["train"])
    names = json.loads((path / "dataset_dict.json").read_text())["splits"]
    return DatasetDict({n: datasets.load_from_disk(str(path / n)) for n in _wanted(names, spec, with_test)}), names


def _load_hub(source: str, config: str | None, spec: DatasetSpec, with_test: bool) -> tuple[DatasetDict, list[str]]:
    """A Hub dataset or a folder in Hub layout; an unwanted split's files are left out, so never read."""
    files = datasets.load_dataset_builder(source, config).config.data_files
    if not files:
        loaded = datasets.load_dataset(source, config)
        return loaded, list(loaded)
    names = list(files)
    wanted = _wanted(names, spec, with_test)
    if wanted == names and not Path(source).is_dir():
        return datasets.load_dataset(source, config), names
    # a local folder always names its files: only then does the cache key hold their paths and mtimes, so a
    # rebuilt folder is read again instead of being served from the cache of its first load
    return datasets.load_dataset(source, config, data_files={n: files[n] for n in wanted}), names


def _load_raw(cfg: DataConfig, spec: DatasetSpec, with_test: bool) -> tuple[DatasetDict, list[str]]:
    """The splits to use, and the names of all the source's splits (the test split may be left unread)."""
    if cfg.name == "synthetic" and cfg.path is None:
        raw = make_synthetic(cfg.synthetic_train_size, cfg.synthetic_test_size, seed=0)
        return DatasetDict({n: raw[n] for n in _wanted(list(raw), spec, with_test)}), list(raw)
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise UserError(f"data.path {cfg.path!r} not found: point it at a dataset folder or a "
                            "CSV/JSON/parquet file")
        if path.is_file():
            return _load_files(path, cfg.test_path, with_test)
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _load_saved(path, spec, with_test)
        try:
            return _load_hub(str(path), None, spec, with_test)  # a folder in Hub layout (data/*.parquet, ...)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"data.path {cfg.path!r}: no dataset found there ({err}); give a Hub-layout "
                            "folder, a save_to_disk folder or a data file") from None
    if spec.hub_id is None:  # data.name=custom without a path: nothing to fetch from the Hub
        raise UserError(f"data.name={cfg.name} needs data.path=<folder or file> (CSV/JSON/parquet or a dataset folder)")
    try:
        return _load_hub(spec.hub_id, spec.hub_config, spec, with_test)
    except Exception as err:  # offline, DNS, HTTP errors all arrive as different types
        raise UserError(
            f"could not load {spec.hub_id!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); offline? point data.path at a local "
            f"copy, e.g. data.path=/path/to/{cfg.name} (Hub-layout or save_to_disk folder, or CSV/JSON/parquet)"
        ) from None


def _label_names(cfg: DataConfig, spec: DatasetSpec, train: Dataset, label_field: str) -> list[str]:
    feature = train.features[label_field]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if spec.label_names:
        return list(spec.label_names)
    values = set(train.unique(label_field))
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def _normalise(ds: Dataset, split: str, text_fields: list[str], label_field: str, names: list[str],
               cfg: DataConfig) -> tuple[Dataset, int]:
    missing = [c for c in [*text_fields, label_field] if c not in ds.column_names]
    if missing:
        raise UserError(f"{split} split has no column(s) {missing}; its columns are {ds.column_names}: "
                        "set data.text_fields=[...] and data.label_field=...")
    index = {name: i for i, name in enumerate(names)}
    is_classlabel = isinstance(ds.features[label_field], ClassLabel)

    def convert(batch: dict) -> dict:
        texts = [" ".join(str(batch[f][i] or "").strip() for f in text_fields).strip()
                 for i in range(len(batch[label_field]))]
        labels = []
        for raw in batch[label_field]:
            if isinstance(raw, str) and not is_classlabel:
                if raw not in index:
                    raise UserError(f"{split} split: label {raw!r} is not one of the label names {names}; "
                                    "use data.name=custom to take the names from the data")
                labels.append(index[raw])
            else:
                value = int(raw) + (0 if is_classlabel else cfg.label_offset)
                if not 0 <= value < len(names):
                    raise UserError(f"{split} split: label {raw!r} is outside 0..{len(names) - 1} "
                                    f"({len(names)} label names {names}); for 1-based labels set "
                                    "data.label_offset=-1")
                labels.append(value)
        return {"text": texts, "label": labels}

    out = ds.map(convert, batched=True, remove_columns=ds.column_names,
                 features=datasets.Features({"text": datasets.Value("string"),
                                             "label": ClassLabel(names=names)}))
    before = len(out)
    out = out.filter(lambda b: [bool(t) for t in b["text"]], batched=True)
    return out, before - len(out)


def in_content_order(split: Dataset) -> Dataset:
    """The rows sorted by (text, label). What follows (carves, caps, label noise, batch order, the probe
    draw) is seeded over row positions, so it then depends on the texts and the seed, never on the order
    a source stores them in (label-sorted exports included); rows equal in both keys are interchangeable."""
    table = split.with_format("arrow")[:]
    return split.select(pc.sort_indices(table, sort_keys=[("text", "ascending"), ("label", "ascending")]).to_numpy())


def _noisy_labels(train: Dataset, rate: float, num_classes: int, seed: int) -> tuple[Dataset, float]:
    rng = np.random.default_rng(seed + 7919)
    labels = np.asarray(train["label"])
    flip = rng.random(len(labels)) < rate
    # a uniformly chosen *different* class, so the realised noise rate is the asked one
    shift = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flip, (labels + shift) % num_classes, labels)
    realised = float((noisy != labels).mean())
    features = train.features.copy()
    train = train.remove_columns("label").add_column("label", noisy.tolist()).cast(features)
    return train, realised


def load_text_data(cfg: DataConfig, seed: int, with_test: bool = True) -> TextData:
    """The train / validation / test splits. ``with_test=False`` (``eval.test=false``, tuning): the source's
    test split is never read and no test split is returned; a test split carved from train is still carved,
    so train and validation are the same either way."""
    spec = _spec(cfg)
    raw, names = _load_raw(cfg, spec, with_test)
    text_fields = cfg.text_fields or list(spec.text_fields)
    label_field = cfg.label_field or spec.label_field
    train_split = spec.train_split if spec.train_split in names else names[0]
    label_names = (_label_names(cfg, spec, raw[train_split], label_field)
                   if label_field in raw[train_split].column_names else [])
    stats: dict = {"dropped_empty": {}}
    train, dropped = _normalise(raw[train_split], "train", text_fields, label_field, label_names, cfg)
    stats["dropped_empty"]["train"] = dropped
    train = in_content_order(train)
    test = None
    if spec.test_split in names and spec.test_split != train_split:
        if with_test:
            test, dropped = _normalise(raw[spec.test_split], "test", text_fields, label_field, label_names, cfg)
            stats["dropped_empty"]["test"] = dropped
    else:  # a single file or folder with one split: carve test first, so it never sees validation choices
        # seed 0 whatever train.seed: every seed of a comparison is scored on the same test set
        parts = train.train_test_split(test_size=cfg.test_fraction, stratify_by_column="label", seed=0)
        train, test = parts["train"], parts["test"] if with_test else None
        stats["test_carved_from_train"] = True
    if len(train) < 4 or (test is not None and len(test) == 0):
        raise UserError(f"dataset is (almost) empty after dropping empty texts: train {len(train)}, "
                        f"test {len(test) if test is not None else 'not loaded'} examples; check data.text_fields")
    if VALIDATION_SPLIT in names and VALIDATION_SPLIT not in (train_split, spec.test_split):
        # the source's own validation split: its authors' held-out set, the same for every seed
        validation, dropped = _normalise(raw[VALIDATION_SPLIT], "validation", text_fields, label_field,
                                         label_names, cfg)
        stats["dropped_empty"]["validation"] = dropped
        validation = validation.shuffle(seed=0)  # a max_eval_samples cap then takes a fair sample
        stats["validation_from_source"] = True
    else:  # stratified and shuffled: a cap below takes a fair sample of it, whatever the file's order
        parts = train.train_test_split(test_size=cfg.val_fraction, stratify_by_column="label", seed=seed)
        train, validation = parts["train"], parts["test"]
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(cfg.max_train_samples))
    if cfg.max_eval_samples is not None:
        validation = validation.select(range(min(cfg.max_eval_samples, len(validation))))
        if test is not None:
            test = test.shuffle(seed=0).select(range(min(cfg.max_eval_samples, len(test))))
    if cfg.label_noise > 0:
        train, stats["label_noise_realised"] = _noisy_labels(train, cfg.label_noise, len(label_names), seed)
    for key, value in stats["dropped_empty"].items():
        if value:
            log.warning("dropped %d empty texts from the %s split", value, key)
    splits = {"train": train, "validation": validation, **({"test": test} if test is not None else {})}
    stats.update({name: len(split) for name, split in splits.items()})
    return TextData(DatasetDict(splits), label_names, cfg.max_length or spec.max_length, stats)
