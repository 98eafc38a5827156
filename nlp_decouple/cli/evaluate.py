"""Evaluate saved runs, on their own test split or on other data:

    nlp-decouple evaluate RUN_DIR...                            # the run's test split, again
    nlp-decouple evaluate RUN_DIR... --split validation
    nlp-decouple evaluate RUN_DIR... data.path=other.csv data.name=custom   # another dataset
    nlp-decouple evaluate RUN_DIR... --texts texts.csv --out predictions.csv  # a CSV of texts

``data.*`` overrides change the run's saved data section (same seed, so the same splits); a CSV of texts
(``--texts``, column ``text``, optional ``label`` as a name or an index) is scored when it has labels and
its predictions are written either way. Results: ``RUN_DIR/evaluation/<data>-<split>.json`` and a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError, cli_entry
from ..logs import setup_console


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlp-decouple evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="RUN_DIR | data.key=value",
                        help="run directories, then optional data.* overrides")
    parser.add_argument("--split", default="test", choices=["test", "validation", "train"])
    parser.add_argument("--texts", help="CSV (column 'text', optional 'label') or .txt (one text per line)")
    parser.add_argument("--out", help="with --texts: where to write the predictions CSV (default: beside each run)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    args = parser.parse_intermixed_args(argv)
    args.runs = [Path(i) for i in args.items if "=" not in i]
    args.overrides = [i for i in args.items if "=" in i]
    if not args.runs:
        parser.error("give at least one run directory")
    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        raise UserError(f"only data.* overrides apply to evaluation, got {bad}")
    return args


def read_text_file(path: Path, label_names: list[str]) -> tuple[list[str], np.ndarray | None]:
    """Texts and (if the file has them) labels as indices into ``label_names``."""
    if not path.is_file():
        raise UserError(f"--texts {str(path)!r} not found")
    if path.suffix.lower() == ".txt":
        from ..inference import read_lines

        return read_lines(path), None
    import datasets

    table = datasets.load_dataset("csv", data_files=str(path), split="train")
    if "text" not in table.column_names:
        raise UserError(f"--texts {str(path)!r} has no 'text' column (columns: {table.column_names})")
    texts = [t if isinstance(t, str) else "" for t in table["text"]]
    if "label" not in table.column_names:
        return texts, None
    labels = []
    for i, value in enumerate(table["label"]):
        if isinstance(value, str) and value not in label_names and value.strip().isdigit():
            value = int(value)  # a column mixing names and indices is read as text
        if isinstance(value, str) and value in label_names:
            labels.append(label_names.index(value))
        elif isinstance(value, (int, np.integer)) and 0 <= value < len(label_names):
            labels.append(int(value))
        else:
            raise UserError(f"--texts {str(path)!r} row {i + 1}: label {value!r} is neither one of "
                            f"{label_names} nor an index below {len(label_names)}")
    return texts, np.asarray(labels)


def score(labels: np.ndarray, exits: dict[int, np.ndarray], label_names: list[str]) -> dict:
    from ..metrics import classification_metrics, detailed_report

    final = exits[max(exits)]
    return {**classification_metrics(labels, final),
            "groups": [{"group": g, "kind": "exit", "accuracy": classification_metrics(labels, logits)["accuracy"]}
                       for g, logits in sorted(exits.items())],
            **detailed_report(labels, final, label_names)}


def evaluate_run(run: Path, args: argparse.Namespace) -> dict:
    from ..config import load_config
    from ..data import load_text_data
    from ..inference import all_exit_logits, check_texts, load_for_inference

    model, tok = load_for_inference(run, args.device)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if args.texts:
        texts, labels = read_text_file(Path(args.texts), names)
        source, split = Path(args.texts).stem, "texts"
    else:
        if not (run / "config.yaml").is_file():
            raise UserError(f"{str(run)!r} has no config.yaml (not a run directory): evaluate a saved model on "
                            "--texts FILE instead")
        cfg = load_config(run / "config.yaml", args.overrides)
        data = load_text_data(cfg.data, cfg.train.seed, with_test=args.split == "test")  # test read only if asked
        if data.label_names != names:
            raise UserError(f"the data's labels {data.label_names} differ from the model's {names}: evaluate on "
                            "data with the same classes")
        table = data.splits[args.split]
        texts, labels = list(table["text"]), np.asarray(table["label"])
        source, split = Path(cfg.data.path).stem if cfg.data.path else cfg.data.name, args.split
    check_texts(texts, args.texts or f"{source} {split}")
    exits = all_exit_logits(model, tok, texts, args.batch_size)
    result = {"run": str(run), "data": source, "split": split, "examples": len(texts),
              "method": model.config.method.get("name"), "encoder": model.config.encoder.get("encoder")}
    if labels is not None:
        result.update(score(labels, exits, names))
    if args.texts:
        write_predictions(Path(args.out) if args.out else run / "evaluation" / f"{source}-predictions.csv",
                          texts, exits[max(exits)], names, labels)
    out = run / "evaluation" / f"{source}-{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def write_predictions(path: Path, texts: list[str], logits: np.ndarray, names: list[str],
                      labels: np.ndarray | None) -> None:
    import csv

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))  # stable softmax, no scipy needed
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "prediction", "probability", *(["label"] if labels is not None else [])])
        for i, text in enumerate(texts):
            k = int(probs[i].argmax())
            writer.writerow([text, names[k], f"{probs[i, k]:.4f}", *([names[labels[i]]] if labels is not None else [])])
    print(f"predictions: {path}", file=sys.stderr)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_console(verbose=False)
    rows = [evaluate_run(run, args) for run in args.runs]
    print("| run | method | data | split | n | accuracy % | macro-F1 % | exits (accuracy % per group) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "accuracy" not in r:
            print(f"| {r['run']} | {r['method']} | {r['data']} | {r['split']} | {r['examples']} | – | – | no labels |")
            continue
        exits = " ".join(f"g{g['group']}:{100 * g['accuracy']:.1f}" for g in r["groups"])
        print(f"| {r['run']} | {r['method']} | {r['data']} | {r['split']} | {r['examples']} | "
              f"{100 * r['accuracy']:.2f} | {100 * r['macro_f1']:.2f} | {exits} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
