"""Sensitivity of each method to one setting at a time, scored on validation only (test is never computed).

Every run is ``python -m nlp_decouple.train RECIPE <cell keys> <size keys> <fixed> <key=value> method.name=M
train.seed=S eval.test=false``; a finished run (its results.json) is kept, so a killed sweep resumes by
running the same command again. Each invocation varies one key over a list of values, for every method and
seed given, and appends to one JSON per output folder:

    python benchmarks/sensitivity.py --cell debian --methods bp,scpl --seeds 100 \
        --vary train.lr=1e-3,3e-3,1e-2 --fixed model.norm=pre --out benchmarks/out/sensitivity
    python benchmarks/sensitivity.py --collect --out benchmarks/out/sensitivity   # table + curves

Cells (real data under $NLP_DECOUPLE_SHARED, default ../shared; the new set under datasets/):
debian (8,000 training texts, 2,000 validation texts, 34 classes), agnews (6,080 texts, validation carved),
imdb (799 reviews, validation carved), pypi (datasets/pypi_topics). The model is sized for a CPU: Transformer
d = 64, 4 heads, FFN 128, 4 groups; 5 epochs unless --fixed says otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = ["model.hidden_size=64", "model.num_heads=4", "model.ffn_size=128", "train.epochs=5"]


def cell_keys(cell: str, shared: Path) -> list[str]:
    minilm = "tokenizer.name=sentence-transformers/all-MiniLM-L6-v2"
    cells = {
        "debian": ["data.name=custom", f"data.path={shared / 'datasets/debian_packages'}", "data.max_train_samples=8000",
                   "data.max_length=64", "data.max_eval_samples=2000", minilm],
        "agnews": ["data.name=ag_news", f"data.path={shared / 'datasets/ag_news_7600'}", "data.max_length=60"],
        "imdb": ["data.name=imdb", f"data.path={shared / 'datasets/imdb_999'}", "data.max_length=256"],
        "pypi": ["data.name=custom", f"data.path={REPO / 'datasets/pypi_topics'}", "data.max_length=64", minilm],
    }
    if cell not in cells:
        raise SystemExit(f"unknown cell {cell!r}: choose from {', '.join(cells)}")
    return cells[cell]


def run_id(cell: str, method: str, seed: int, settings: list[str]) -> str:
    digest = hashlib.sha1(" ".join(sorted(settings)).encode()).hexdigest()[:10]
    return f"{cell}-{method}-s{seed}-{digest}"


def summarise(run_dir: Path) -> dict:
    """Best validation accuracy, its epoch, the per-epoch curve and the per-group accuracies at the best epoch."""
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = max(epochs, key=lambda e: e["validation"]["accuracy"])
    return {"best_val_acc": best["validation"]["accuracy"], "best_val_f1": best["validation"]["macro_f1"],
            "best_epoch": best["epoch"], "curve": [e["validation"]["accuracy"] for e in epochs],
            "groups": [g.get("validation") for g in best.get("groups") or []],
            "epoch_time_s": [e.get("epoch_time_s") for e in epochs]}


def train(args: argparse.Namespace) -> None:
    shared = Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared")).resolve()
    key, _, values = args.vary.partition("=")
    store = args.out / "sensitivity.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads),
           "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE", str(shared / "hf-cache")), "HF_HUB_OFFLINE": "1"}
    for value in values.split(","):
        for seed in map(int, args.seeds.split(",")):
            for method in args.methods.split(","):
                settings = [*SIZE, *args.fixed, f"{key}={value}"]
                rid = run_id(args.cell, method, seed, settings)
                run_dir = args.out / "runs" / rid
                if rid in rows:
                    continue
                if not (run_dir / "results.json").exists():
                    cmd = [sys.executable, "-m", "nlp_decouple.train", str(REPO / args.recipe), *cell_keys(args.cell, shared),
                           *settings, f"method.name={method}", f"train.seed={seed}", "eval.test=false",
                           "train.progress=false", f"output_dir={args.out / 'runs'}", f"run_name={rid}",
                           *(["train.resume=auto"] if (run_dir / "checkpoints").is_dir() else [])]
                    run_dir.mkdir(parents=True, exist_ok=True)
                    start = time.time()
                    with (run_dir / "train.log").open("a") as log:
                        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                    print(f"{rid} {key}={value} {method}: exit {code} in {time.time() - start:.0f}s", flush=True)
                    if code != 0:
                        continue
                rows = json.loads(store.read_text()) if store.exists() else {}
                rows[rid] = {"cell": args.cell, "method": method, "seed": seed, "recipe": args.recipe,
                             "vary": key, "value": value, "fixed": args.fixed, **summarise(run_dir)}
                store.write_text(json.dumps(rows, indent=1, sort_keys=True))


def collect(args: argparse.Namespace) -> None:
    """One table per (cell, varied key, fixed settings): best validation accuracy per method and value."""
    rows = json.loads((args.out / "sensitivity.json").read_text())
    series: dict[tuple, dict] = {}
    for row in rows.values():
        series.setdefault((row["cell"], row["vary"], " ".join(row["fixed"])), {}).setdefault(
            row["method"], {}).setdefault(row["value"], []).append(row)
    for (cell, key, fixed), methods in sorted(series.items()):
        values = sorted({v for m in methods.values() for v in m}, key=float)
        print(f"\n{cell}  {key}  [{fixed}]")
        print("method     " + "".join(f"{v:>22}" for v in values))
        for method, by_value in sorted(methods.items()):
            cells = []
            for v in values:
                runs = by_value.get(v, [])
                if not runs:
                    cells.append(f"{'-':>22}")
                    continue
                acc = sum(r["best_val_acc"] for r in runs) / len(runs)
                g = runs[0]["groups"]
                first, last = (g[0], g[-1]) if g and None not in (g[0], g[-1]) else (float("nan"),) * 2
                cells.append(f"{100 * acc:8.2f} ({100 * first:4.1f}->{100 * last:4.1f})")
            print(f"{method:<11}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="debian")
    parser.add_argument("--recipe", default="recipes/agnews_transformer.yaml")
    parser.add_argument("--methods", default="bp,scpl")
    parser.add_argument("--seeds", default="100")
    parser.add_argument("--vary", default="train.lr=1e-3", help="KEY=V1,V2,...")
    parser.add_argument("--fixed", nargs="*", default=[], help="key=value settings held fixed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/sensitivity")
    parser.add_argument("--collect", action="store_true", help="print the tables of what has run")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    collect(args) if args.collect else train(args)


if __name__ == "__main__":
    main()
