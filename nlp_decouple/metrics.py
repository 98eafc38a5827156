"""Evaluation: predictions gathered per example, metrics with scikit-learn, layer-wise accuracies
(each group's own exit where the method has one, else a linear probe on its pooled vectors)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from .classifier import StagedClassifier
from .models import Standardizer


@dataclass
class SplitOutputs:
    labels: np.ndarray  # (N,)
    exit_logits: dict[int, np.ndarray]  # global group index -> (N, C), for groups that end in an exit
    pooled: list[np.ndarray] = field(default_factory=list)  # per group (N, d), when asked

    @property
    def final_logits(self) -> np.ndarray:
        return self.exit_logits[max(self.exit_logits)]


@torch.no_grad()
def collect(model: StagedClassifier, loader: DataLoader, accelerator: Accelerator,
            return_pooled: bool = False) -> SplitOutputs:
    """Forward a whole split; everything gathered once per example across processes."""
    was_training = model.training
    model.eval()
    ends = model.stage_ends()
    labels, logits, pooled = [], {}, []
    for batch in loader:
        outs = model.run(batch["input_ids"], batch["attention_mask"], return_pooled=return_pooled)
        labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
        for end, out in zip(ends, outs):
            if out.logits is not None:
                logits.setdefault(end, []).append(accelerator.gather_for_metrics(out.logits.float()).cpu())
        pooled.append([accelerator.gather_for_metrics(p.float()).cpu() for out in outs for p in out.pooled])
    model.train(was_training)
    per_group = [torch.cat([f[k] for f in pooled]).numpy() for k in range(len(pooled[0]))] if return_pooled else []
    return SplitOutputs(torch.cat(labels).numpy(), {g: torch.cat(v).numpy() for g, v in logits.items()}, per_group)


@torch.no_grad()
def refresh_standardizers(model: StagedClassifier, loader: DataLoader, accelerator: Accelerator,
                          return_pooled: bool = False) -> SplitOutputs | None:
    """Precise BatchNorm (Wu & Johnson, 2021) for the classifiers' standardizers: their statistics become
    the mean and variance of their inputs over ``loader``'s training texts, under the current weights and
    in evaluation mode (the inputs the exits will see), gathered once per example over processes. Training
    is unaffected (it normalises by batch statistics). Returns the pass's outputs, or None without
    standardizers."""
    norms = [m for m in model.modules() if isinstance(m, Standardizer)]
    if not norms:
        return None
    inputs: dict[Standardizer, list[torch.Tensor]] = {n: [] for n in norms}

    def capture(module, args, _output):
        inputs[module].append(accelerator.gather_for_metrics(args[0].float()).cpu().double())

    handles = [n.register_forward_hook(capture) for n in norms]
    try:
        outputs = collect(model, loader, accelerator, return_pooled=return_pooled)
    finally:
        for h in handles:
            h.remove()
    for n in norms:
        x = torch.cat(inputs[n])
        n.running_mean.copy_(x.mean(0))
        n.running_var.copy_(x.var(0) if len(x) > 1 else torch.ones_like(n.running_var))
    return outputs


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    preds = logits.argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}


def detailed_report(labels: np.ndarray, logits: np.ndarray, names: list[str]) -> dict:
    preds = logits.argmax(-1)
    ids = list(range(len(names)))
    return {
        "per_class": classification_report(labels, preds, labels=ids, target_names=names,
                                           output_dict=True, zero_division=0),
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def probe_accuracies(train: SplitOutputs, evals: dict[str, SplitOutputs], max_iter: int,
                     seed: int) -> list[dict[str, float]]:
    """Fit a logistic-regression probe per group on training features; accuracy on each eval split."""
    results = []
    for k, features in enumerate(train.pooled):
        if k in train.exit_logits:  # the group's own exit is its accuracy: no probe needed
            results.append({})
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
        probe.fit(features, train.labels)
        results.append({name: float(probe.score(out.pooled[k], out.labels)) for name, out in evals.items()})
    return results


def layerwise(train_probe: SplitOutputs | None, evals: dict[str, SplitOutputs], max_iter: int,
              seed: int) -> list[dict]:
    """Per group: accuracy of its exit where it has one, else of a linear probe."""
    first = next(iter(evals.values()))
    num_groups = len(first.pooled)
    probes = probe_accuracies(train_probe, evals, max_iter, seed) if train_probe is not None else None
    rows = []
    for k in range(num_groups):
        if k in first.exit_logits:
            row = {"group": k, "kind": "exit"}
            row.update({name: classification_metrics(out.labels, out.exit_logits[k])["accuracy"]
                        for name, out in evals.items()})
        else:
            row = {"group": k, "kind": "probe", **(probes[k] if probes else {})}
        rows.append(row)
    return rows


def evaluate(model: StagedClassifier, loaders: dict[str, DataLoader], probe_loader: DataLoader,
             accelerator: Accelerator, every_group: bool, probe_max_iter: int, seed: int
             ) -> tuple[dict, dict[str, SplitOutputs]]:
    """Scores of each split (``{"validation": {...}, "test": {...}, "groups": [...]}``) and the outputs
    behind them. Per-group accuracies need a linear probe (fit on ``probe_loader``'s training texts) only
    for groups without an exit of their own. The classifiers' standardizers are refreshed first, on the
    same training texts (whose pass then also serves the probes)."""
    train_pass = refresh_standardizers(model, probe_loader, accelerator, return_pooled=every_group)
    outs = {name: collect(model, loader, accelerator, return_pooled=every_group) for name, loader in loaders.items()}
    scores: dict = {name: classification_metrics(o.labels, o.final_logits) for name, o in outs.items()}
    if every_group:
        first = next(iter(outs.values()))
        needs_probe = len(first.exit_logits) < len(first.pooled)
        probe_train = None
        if needs_probe:
            probe_train = train_pass if train_pass is not None else collect(model, probe_loader, accelerator, True)
        scores["groups"] = layerwise(probe_train, outs, probe_max_iter, seed)
    return scores, outs


def write_predictions(path: Path, outputs: SplitOutputs, epoch: int) -> None:
    """Per-example labels and final predictions of one split (paired comparisons between runs)."""
    path.write_text(json.dumps({"epoch": epoch, "labels": outputs.labels.tolist(),
                                "predictions": outputs.final_logits.argmax(-1).tolist()}))
