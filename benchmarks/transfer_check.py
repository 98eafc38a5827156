"""Do a recipe's defaults transfer? BP against SCPL with a recipe as shipped, only data, size and epoch keys
replaced, on cells the defaults were or were not chosen on; test accuracy at the best-validation epoch.

Each (cell, recipe) is one ``nlp-decouple compare`` sweep (resumable: run the same command again), then one
JSON row per sweep with the means, macro-F1, the paired per-seed differences, the report's verdict at the
margin and each method's gain from the first group's probe to its exit:

    python benchmarks/transfer_check.py --cells debian,pypi --seeds 0,1,2 --jobs 2 --out benchmarks/out/transfer
    python benchmarks/transfer_check.py ... --old-recipe 728ec74   # also the recipe as it was at that commit

Cells and sizes are benchmarks/sensitivity.py's (Transformer d = 64, 4 heads, FFN 128, 4 groups); the
budget is ``--epochs`` (5).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity import REPO, cell_keys

SIZE = ["model.hidden_size=64", "model.num_heads=4", "model.ffn_size=128"]


def recipes(args: argparse.Namespace) -> dict[str, Path]:
    """name -> recipe file: the shipped one, and with --old-recipe the same file as it was at that commit."""
    chosen = {"shipped": REPO / args.recipe}
    if args.old_recipe:
        text = subprocess.run(["git", "show", f"{args.old_recipe}:{args.recipe}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        old = args.out / f"recipe-{args.old_recipe}.yaml"
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_text(text)
        chosen[f"at {args.old_recipe}"] = old
    return chosen


def sweep(cell: str, recipe: Path, out: Path, args: argparse.Namespace) -> Path:
    shared = Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared")).resolve()
    cmd = [sys.executable, "-m", "nlp_decouple", "compare", str(recipe), f"methods={args.methods}",
           f"seeds={args.seeds}", *cell_keys(cell, shared), *SIZE, f"train.epochs={args.epochs}",
           "train.progress=false", "--out", str(out), "--jobs", str(args.jobs), "--margin", str(args.margin)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return out / "report" / "report.json"


def gain(row: dict) -> float | None:
    """Test accuracy of the exit minus the first group's probe (points), at the best epoch."""
    groups = row.get("groups_test_accuracy") or []
    return groups[-1]["test_accuracy"] - groups[0]["test_accuracy"] if len(groups) > 1 else None


def summary(report: Path) -> dict:
    rows = {r["method"]: r for r in json.loads(report.read_text())["rows"]}
    out = {}
    for method, r in rows.items():
        vs = r.get("vs_bp") or {}
        out[method] = {"test_accuracy_mean": r["test_accuracy_mean"], "test_accuracy_std": r["test_accuracy_std"],
                       "test_macro_f1_mean": r["test_macro_f1_mean"], "seeds": r["seeds"],
                       "best_epochs": r["best_epochs"],
                       "groups_test_accuracy": [g["test_accuracy"] for g in r.get("groups_test_accuracy") or []],
                       "first_group_to_exit_gain": gain(r), "diff_vs_bp": vs.get("test_accuracy_diff"),
                       "verdict_vs_bp": vs.get("verdict")}
    if "bp" in out and "scpl" in out and out["bp"]["first_group_to_exit_gain"]:
        out["scpl"]["gain_share_of_bp"] = out["scpl"]["first_group_to_exit_gain"] / out["bp"]["first_group_to_exit_gain"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="debian,pypi")
    parser.add_argument("--recipe", default="recipes/agnews_transformer.yaml")
    parser.add_argument("--old-recipe", default=None, help="a commit: also run the recipe as it was there")
    parser.add_argument("--methods", default="bp,scpl")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "transfer")
    args = parser.parse_args()
    store = args.out / "transfer_check.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for name, recipe in recipes(args).items():
        for cell in args.cells.split(","):
            label = f"{cell} / {name}"
            report = sweep(cell, recipe, args.out / f"{cell}-{name.replace(' ', '-')}", args)
            results[label] = {"cell": cell, "recipe": str(recipe.relative_to(args.out) if recipe.is_relative_to(
                args.out) else recipe.relative_to(REPO)), "epochs": args.epochs, "margin": args.margin,
                "methods": summary(report)}
            store.write_text(json.dumps(results, indent=1))
            print(label, json.dumps({m: round(v["test_accuracy_mean"], 2) for m, v in results[label]["methods"].items()}),
                  flush=True)


if __name__ == "__main__":
    main()
