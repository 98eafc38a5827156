"""The model card (README.md) of a saved model: Hub metadata (library, pipeline tag, dataset, scores as
model-index eval results, method, groups, encoder, toolkit version) and a short text on how to load it."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import __version__
from .config import Config, group_sizes
from .registry import DATASETS, METHODS, MethodInfo

if TYPE_CHECKING:
    from .data import TextData

CHOSEN = {"best": "the epoch with the best validation accuracy", "last": "the last epoch"}


@functools.cache
def source_commit() -> str | None:
    """The git commit of the package's source when it runs from its own checkout (None otherwise, e.g.
    installed into a virtual environment that lies inside some other repository)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "nlp_decouple" != here:
        return None
    return lines[1]


def dataset_id(cfg: Config) -> tuple[str | None, str]:
    """(Hub dataset id or None, the name shown in eval results)."""
    spec = DATASETS.get(cfg.data.name)
    if spec is not None and spec.hub_id:
        return spec.hub_id, cfg.data.name
    return None, Path(cfg.data.path).name if cfg.data.path else cfg.data.name


def eval_results(row: dict, dataset: str, name: str) -> list[EvalResult]:
    """Accuracy and macro-F1 of the row's epoch on validation and (when scored) test."""
    found = []
    for split in ("test", "validation"):
        for metric, key, title, args in (("accuracy", "accuracy", "accuracy", None),
                                         ("f1", "macro_f1", "macro-F1", {"average": "macro"})):
            if row.get(split) and key in row[split]:
                found.append(EvalResult(task_type="text-classification", dataset_type=dataset, dataset_name=name,
                                        dataset_split=split, metric_type=metric, metric_name=f"{split} {title}",
                                        metric_value=round(float(row[split][key]), 4), metric_args=args))
    return found


def build_card(directory: Path, cfg: Config, data: TextData, row: dict, tag: str) -> ModelCard:
    """``row``: the metrics of the epoch whose weights ``directory`` holds (``tag``: best or last)."""
    hub_id, name = dataset_id(cfg)
    info, groups = METHODS[cfg.method.name], group_sizes(cfg)
    base = cfg.model.pretrained if cfg.model.encoder == "pretrained" and not Path(cfg.model.pretrained).exists() else None
    meta = ModelCardData(
        model_name=cfg.run_name or directory.parent.name, library_name="nlp_decouple",
        pipeline_tag="text-classification", datasets=[hub_id] if hub_id else None, metrics=["accuracy", "f1"],
        base_model=base, tags=["text-classification", "nlp_decouple", cfg.method.name, cfg.model.encoder],
        eval_results=eval_results(row, hub_id or name, name),
        nlp_decouple={"version": __version__, "commit": source_commit(), "method": cfg.method.name,
                      "encoder": cfg.model.encoder, "group_sizes": groups, "epoch": row["epoch"], "weights": tag,
                      "max_length": data.max_length, "seed": cfg.train.seed})
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{body(directory, cfg, data, row, tag, info, groups)}")


def body(directory: Path, cfg: Config, data: TextData, row: dict, tag: str, info: MethodInfo,
         groups: list[int]) -> str:
    encoder = cfg.model.pretrained if cfg.model.encoder == "pretrained" else cfg.model.encoder
    scores = ["| split | accuracy | macro-F1 |", "|---|---|---|"]
    for split in ("validation", "test"):
        if row.get(split):
            scores.append(f"| {split} ({data.stats.get(split, '?')} texts) | {row[split]['accuracy']:.4f} | "
                          f"{row[split]['macro_f1']:.4f} |")
    carved = " (the test split was carved from train)" if data.stats.get("test_carved_from_train") else ""
    commit = f", commit {source_commit()[:12]}" if source_commit() else ""
    return f"""
# {cfg.run_name or directory.parent.name}

A text classifier trained with nlp_decouple {__version__}{commit}: **{info.display}** ({info.summary}) on a
{encoder} encoder cut into {len(groups)} layer groups (blocks per group, the embedding first: {groups}).
Dataset: {cfg.data.name}{carved}, {len(data.label_names)} classes ({", ".join(data.label_names)}), texts cut
to {data.max_length} tokens. These weights are from epoch {row['epoch']}, {CHOSEN[tag]}.

## Scores at epoch {row['epoch']}

{chr(10).join(scores)}

## Use

```python
import nlp_decouple.hf  # registers the model type with transformers' Auto classes
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

path = "{directory}"  # this folder
model = AutoModelForSequenceClassification.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
classify = pipeline("text-classification", model=path)
print(classify(["a text to classify"], top_k=None))
```

or `nlp-decouple predict {directory} "a text to classify"`. Texts longer than {data.max_length} tokens
are cut as in training.
"""


def write_model_card(directory: Path, cfg: Config, data: TextData, row: dict, tag: str) -> None:
    build_card(directory, cfg, data, row, tag).save(str(directory / "README.md"))
