"""Why SCPL falls behind BP on many unbalanced classes: what the trainer does not log.

    python benchmarks/scpl_diagnosis.py RUN_DIR... [--reference BP_RUN_DIR] [--batch-size 128]
        [--samples-per-class 4] [--queue 0 1024] --out benchmarks/out/scpl_diagnosis.json
    python benchmarks/scpl_diagnosis.py QUICKSTART_RUN_DIR... --negation --out benchmarks/out/quickstart_negation.json

* positives: per training batch, the fraction of anchors with no positive (same-class text) and the mean
  number of positives per anchor, for random batches and the class-grouped samplers of
  nlp_decouple.data.sampling, with and without a feature memory of the last Q texts; simulated on the
  training labels of the first run's config (no model involved).
* runs: per epoch, validation accuracy, per-group accuracies and per-stage training losses (from
  metrics.jsonl); for the best model, per-class validation recall (against --reference, by class
  frequency), and the last group's exit classifier against a linear probe fitted on the same features.
* --negation (the synthetic quickstart data): per group, probe accuracy on negated vs plain texts.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nlp_decouple.config import load_config
from nlp_decouple.data import draw_probe_set, load_text_data
from nlp_decouple.data.sampling import ClassGroupedBatchSampler
from nlp_decouple.inference import encoded_batches, load_for_inference
from nlp_decouple.models import Standardizer


def positive_stats(labels: list[int], batches: list[list[int]], queue: int) -> dict:
    """Anchors without a positive and positives per anchor; the memory holds the previous ``queue`` texts."""
    labels_arr = np.asarray(labels)
    counts = Counter(labels)
    rare = set(sorted(counts, key=lambda c: counts[c])[:len(counts) // 3])  # the rarest third of the classes
    pos_all, is_rare, history = [], [], []
    for batch in batches:
        y = labels_arr[batch].tolist()
        memory = Counter(history[-queue:]) if queue else Counter()
        in_batch = Counter(y)
        pos_all += [in_batch[c] - 1 + memory[c] for c in y]
        is_rare += [c in rare for c in y]
        history += y
    pos, is_rare = np.array(pos_all), np.array(is_rare)
    return {"anchors_without_positive": float((pos == 0).mean()), "positives_per_anchor": float(pos.mean()),
            "rare_third_without_positive": float((pos[is_rare] == 0).mean()),
            "rare_third_positives_per_anchor": float(pos[is_rare].mean()),
            "rare_third_share_of_anchors": float(is_rare.mean()),
            "classes_per_batch": float(np.mean([len(set(labels_arr[b].tolist())) for b in batches]))}


def sampler_batches(kind: str, labels: list[int], batch_size: int, m: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        order = torch.randperm(len(labels), generator=g).tolist()
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return list(ClassGroupedBatchSampler(labels, batch_size, m, g, balanced=kind == "class_balanced"))


@torch.no_grad()
def pooled_and_logits(model, tok, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every group's pooled vectors and the exit's logits of a saved model (``load_for_inference``)."""
    pooled, logits = [], []
    for batch in encoded_batches(tok, texts, model.config.max_seq_length, 256, model.device):
        outs = model.staged.run(batch["input_ids"], batch["attention_mask"], return_pooled=True)
        pooled.append([p.float().numpy() for out in outs for p in out.pooled])
        logits.append(outs[-1].logits.float().numpy())
    return [np.concatenate([b[k] for b in pooled]) for k in range(len(pooled[0]))], np.concatenate(logits)


@torch.no_grad()
def exit_with_fresh_statistics(model, train_pooled: np.ndarray, val_pooled: np.ndarray, y_val: np.ndarray
                               ) -> float | None:
    """The saved exit classifier with its standardizer's statistics swapped for those of the training
    texts' features (what metrics.refresh_standardizers does before each evaluation): how much stale
    running averages cost a model saved without the refresh. None for exits without a standardizer."""
    heads = [m for m in model.modules() if isinstance(getattr(m, "norm", None), Standardizer)]
    if not heads:
        return None
    head, x = heads[-1], torch.from_numpy(train_pooled).double()
    z = (torch.from_numpy(val_pooled).double() - x.mean(0)) / torch.sqrt(x.var(0) + head.norm.eps)
    return float((head.classifier(z.float()).argmax(-1).numpy() == y_val).mean())


def probe_texts(data, probe_samples: int, seed: int):
    """The training texts the trainer's probes and standardiser refresh used (its seeded probe draw)."""
    train = data.splits["train"]
    return train.select(draw_probe_set(train["label"], data.num_classes, probe_samples, seed).indices)


def run_summary(run: Path, probe_samples: int) -> dict:
    cfg = load_config(run / "config.yaml")
    data = load_text_data(cfg.data, cfg.train.seed, with_test=False)  # validation only
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train, val = probe_texts(data, probe_samples, cfg.train.seed), data.splits["validation"]
    model, tok = load_for_inference(run / "best", "cpu")  # once per run
    train_pooled, _ = pooled_and_logits(model, tok, list(train["text"]))
    val_pooled, val_logits = pooled_and_logits(model, tok, list(val["text"]))
    y_train, y_val = np.asarray(train["label"]), np.asarray(val["label"])
    preds = val_logits.argmax(-1)
    counts = Counter(data.splits["train"]["label"])
    recall = {name: float((preds[y_val == c] == c).mean()) if (y_val == c).any() else None
              for c, name in enumerate(data.label_names)}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0))
    probe.fit(train_pooled[-1], y_train)
    fresh = exit_with_fresh_statistics(model, train_pooled[-1], val_pooled[-1], y_val)
    return {
        "run": str(run), "method": cfg.method.name, "seed": cfg.train.seed,
        "epochs": [{"epoch": r["epoch"], "validation": r["validation"]["accuracy"],
                    "macro_f1": r["validation"]["macro_f1"], "train_loss": r["train_loss"],
                    "groups": [g.get("validation") for g in r.get("groups") or []]} for r in history],
        "best_validation": max(r["validation"]["accuracy"] for r in history),
        "last_group": {"exit_accuracy": float((preds == y_val).mean()),
                       "probe_accuracy": float(probe.score(val_pooled[-1], y_val)),
                       "exit_accuracy_fresh_statistics": fresh},
        "recall": recall, "train_counts": {name: counts[c] for c, name in enumerate(data.label_names)},
    }


def negation_split(run: Path, probe_samples: int) -> dict:
    """Synthetic data: per group, a linear probe's validation accuracy on texts whose opinion word is
    negated ("not good") and on the rest; and the exit's. The label flips on that "not"."""
    from nlp_decouple.data.synthetic import NEGATIVE, POSITIVE

    opinion = set(POSITIVE) | set(NEGATIVE)
    cfg = load_config(run / "config.yaml")
    data = load_text_data(cfg.data, cfg.train.seed, with_test=False)  # validation only
    train, val = probe_texts(data, probe_samples, cfg.train.seed), data.splits["validation"]
    model, tok = load_for_inference(run / "best", "cpu")
    train_pooled, _ = pooled_and_logits(model, tok, list(train["text"]))
    val_pooled, val_logits = pooled_and_logits(model, tok, list(val["text"]))
    y_train, y_val = np.asarray(train["label"]), np.asarray(val["label"])
    negated = np.array([any(a == "not" and b in opinion for a, b in zip(t.split(), t.split()[1:])) for t in val["text"]])
    rows = []
    for k, (tr, va) in enumerate(zip(train_pooled, val_pooled)):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0)).fit(tr, y_train)
        right = probe.predict(va) == y_val
        rows.append({"group": k, "probe_negated": float(right[negated].mean()), "probe_plain": float(right[~negated].mean())})
    right = val_logits.argmax(-1) == y_val
    return {"run": str(run), "negated_texts": int(negated.sum()), "plain_texts": int((~negated).sum()), "groups": rows,
            "exit_negated": float(right[negated].mean()), "exit_plain": float(right[~negated].mean())}


def recall_by_frequency(run: dict, reference: dict) -> dict:
    """Mean recall difference (run - reference) over the frequent, middle and rare thirds of classes."""
    names = sorted(run["train_counts"], key=lambda k: -run["train_counts"][k])
    thirds = np.array_split(np.array(names), 3)
    out = {}
    for label, part in zip(("frequent", "middle", "rare"), thirds):
        diffs = [run["recall"][k] - reference["recall"][k] for k in part
                 if run["recall"][k] is not None and reference["recall"][k] is not None]
        out[label] = {"classes": len(part), "train_texts": int(sum(run["train_counts"][k] for k in part)),
                      "recall": float(np.mean([run["recall"][k] for k in part if run["recall"][k] is not None])),
                      "recall_minus_reference": float(np.mean(diffs))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, help="a BP run: per-class recall is compared with it")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--queue", type=int, nargs="*", default=[0, 1024])
    parser.add_argument("--probe-samples", type=int, default=2000)
    parser.add_argument("--negation", action="store_true", help="synthetic runs: accuracy on negated vs plain texts")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.negation:
        result = [negation_split(run, args.probe_samples) for run in args.runs]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        for r in result:
            print(r["run"], "exit negated/plain", round(r["exit_negated"], 3), round(r["exit_plain"], 3),
                  [(g["group"], round(g["probe_negated"], 3), round(g["probe_plain"], 3)) for g in r["groups"]])
        return

    cfg = load_config(args.runs[0] / "config.yaml")
    labels = list(load_text_data(cfg.data, cfg.train.seed).splits["train"]["label"])
    positives = {f"{kind}/queue{q}": positive_stats(labels, sampler_batches(kind, labels, args.batch_size,
                                                                            args.samples_per_class, 0), q)
                 for kind in ("random", "grouped", "class_balanced") for q in args.queue}
    result = {"batch_size": args.batch_size, "samples_per_class": args.samples_per_class,
              "classes": len(set(labels)), "train_texts": len(labels), "positives": positives}
    reference = run_summary(args.reference, args.probe_samples) if args.reference else None
    result["reference"] = reference
    result["runs"] = []
    for run in args.runs:
        summary = run_summary(run, args.probe_samples)
        if reference is not None:
            summary["recall_vs_reference"] = recall_by_frequency(summary, reference)
        result["runs"].append(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, row in positives.items():
        print(f"{name:26s} no positive {row['anchors_without_positive']:.3f} (rare third "
              f"{row['rare_third_without_positive']:.3f})  positives/anchor {row['positives_per_anchor']:.1f} (rare "
              f"{row['rare_third_positives_per_anchor']:.1f}, {row['rare_third_share_of_anchors']:.3f} of anchors)  "
              f"classes/batch {row['classes_per_batch']:.1f}")
    for run in [reference, *result["runs"]]:
        if run is None:
            continue
        print(f"{run['run']}: best val {run['best_validation']:.4f}; last group exit "
              f"{run['last_group']['exit_accuracy']:.4f} (fresh statistics: "
              f"{run['last_group']['exit_accuracy_fresh_statistics']}) vs probe {run['last_group']['probe_accuracy']:.4f}; "
              f"val/epoch {[round(e['validation'], 3) for e in run['epochs']]}")
        if "recall_vs_reference" in run:
            print("   recall vs reference by class frequency:", {k: round(v["recall_minus_reference"], 3)
                                                               for k, v in run["recall_vs_reference"].items()})


if __name__ == "__main__":
    main()
