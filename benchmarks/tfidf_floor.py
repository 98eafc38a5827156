"""The TF-IDF + linear-classifier floor next to the neural numbers, on exactly the runs' splits.

For each seed the data is loaded by the package itself from the recipe + overrides (so the training
subset, the carved validation and the test split are those of ``train.seed=S``); word 1–2-gram TF-IDF
(sublinear tf) + a linear SVM (liblinear, one-vs-rest), its C chosen on validation accuracy from a grid, then
scored once on test. The texts are not truncated to ``data.max_length`` (the floor sees whole texts).

    python benchmarks/tfidf_floor.py recipes/agnews_transformer.yaml data.path=../shared/datasets/ag_news_7600 \
        --seeds 0 1 2 --out benchmarks/out/tfidf_agnews.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import LinearSVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nlp_decouple.config import load_config
from nlp_decouple.data.loading import load_text_data

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


def floor_for_seed(recipe: str, overrides: list[str], seed: int, grid: tuple[float, ...]) -> dict:
    cfg = load_config(recipe, [*overrides, f"train.seed={seed}"])
    data = load_text_data(cfg.data, seed).splits
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(data["train"]["text"])  # fitted on the training split only
    x_val, x_test = vectorizer.transform(data["validation"]["text"]), vectorizer.transform(data["test"]["text"])
    y_train, y_val, y_test = data["train"]["label"], data["validation"]["label"], data["test"]["label"]
    val_acc = {}
    models = {}
    for c in grid:
        models[c] = LinearSVC(C=c).fit(x_train, y_train)
        val_acc[c] = accuracy_score(y_val, models[c].predict(x_val))
    best = max(grid, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularisation
    pred = models[best].predict(x_test)
    return {"seed": seed, "train": len(y_train), "validation": len(y_val), "test": len(y_test),
            "validation_accuracy_by_C": {str(c): round(a, 6) for c, a in val_acc.items()}, "C": best,
            "validation_accuracy": val_acc[best], "test_accuracy": accuracy_score(y_test, pred),
            "test_macro_f1": f1_score(y_test, pred, average="macro")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the same data overrides as the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", type=float, nargs="+", default=list(C_GRID), help="C values tried on validation")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = [floor_for_seed(args.recipe, args.overrides, s, tuple(args.grid)) for s in args.seeds]
    accs = [r["test_accuracy"] for r in runs]
    summary = {"test_accuracy_mean": statistics.fmean(accs),
               "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "test_macro_f1_mean": statistics.fmean(r["test_macro_f1"] for r in runs)}
    report = {"recipe": args.recipe, "overrides": args.overrides, "runs": runs, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"TF-IDF + linear SVM: test accuracy {100 * summary['test_accuracy_mean']:.2f} ± "
          f"{100 * summary['test_accuracy_std']:.2f} (n={len(accs)}), macro-F1 {100 * summary['test_macro_f1_mean']:.2f}; "
          f"C per seed {[r['C'] for r in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
