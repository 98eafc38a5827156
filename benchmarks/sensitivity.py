"""Sensitivity of each method to one setting at a time, scored on validation only (test is never computed).

Every run is ``python -m nlp_decouple.train RECIPE <cell keys> <size keys> <fixed> <key=value> method.name=M
train.seed=S eval.test=false``; a finished run (its results.json) is kept, so a killed sweep resumes by
running the same command again. Each invocation varies one key over a list of values, for every method and
seed given, and appends to one JSON per output folder:

    python benchmarks/sensitivity.py --cell debian --methods bp,scpl --seeds 100 \
        --vary train.lr=1e-3,3e-3,1e-2 --fixed model.norm=pre --out benchmarks/out/sensitivity
    python benchmarks/sensitivity.py ... --vary "train.group_lr_scale=1,1,2,2;0.5,1,1,1"  # lists: ";" (one: "1,2;")
    python benchmarks/sensitivity.py ... --jobs 8       # 8 runs at once (one GPU holds several)
    python benchmarks/sensitivity.py --collect --out benchmarks/out/sensitivity   # the tables
    python benchmarks/sensitivity.py --choose --cells debian,agnews --out ...      # leave-one-dataset-out

Cells (real data under $NLP_DECOUPLE_SHARED, default ../shared; the new set under datasets/):
debian (8,000 training texts, 2,000 validation texts, 34 classes), agnews (6,080 texts, validation carved),
imdb (799 reviews, validation carved), pypi (datasets/pypi_topics, 8,000 training texts). The model is sized for a CPU: Transformer
d = 64, 4 heads, FFN 128, 4 groups; 5 epochs unless --fixed says otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nlp_decouple.sweeps import run_training

SIZE = ["model.hidden_size=64", "model.num_heads=4", "model.ffn_size=128", "train.epochs=5"]


def size_keys(recipe: Path) -> list[str]:
    """SIZE, without the model's size for a pretrained recipe (the Hub model brings its own)."""
    encoder = (yaml.safe_load(recipe.read_text()).get("model") or {}).get("encoder")
    return SIZE if encoder != "pretrained" else [k for k in SIZE if not k.startswith("model.")]


def cell_keys(cell: str, shared: Path) -> list[str]:
    minilm = "tokenizer.name=sentence-transformers/all-MiniLM-L6-v2"
    cells = {
        "debian": ["data.name=custom", f"data.path={shared / 'datasets/debian_packages'}", "data.max_train_samples=8000",
                   "data.max_length=64", "data.max_eval_samples=2000", minilm],
        "agnews": ["data.name=ag_news", f"data.path={shared / 'datasets/ag_news_7600'}", "data.max_length=60"],
        "imdb": ["data.name=imdb", f"data.path={shared / 'datasets/imdb_999'}", "data.max_length=256"],
        "pypi": ["data.name=custom", f"data.path={REPO / 'datasets/pypi_topics'}", "data.max_train_samples=8000",
                 "data.max_length=64", minilm],
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
    """Run every (value, seed, method) not yet in the JSON, ``args.jobs`` at a time (several runs share one GPU
    well; on a CPU keep 1 per core), and add each finished run's row as it ends."""
    shared = Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared")).resolve()
    key, _, values = args.vary.partition("=")
    store = args.out / "sensitivity.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    env = {"HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE", str(shared / "hf-cache")), "HF_HUB_OFFLINE": "1"}
    size = size_keys(REPO / args.recipe)
    todo = []  # (run id, its row without results, the overrides to train it; None when it has finished)
    # values with commas of their own (a list: train.group_lr_scale=1,1,2,2) are separated by ";", and a
    # single one ends with ";"
    for value in filter(None, values.split(";" if ";" in values else ",")):
        for seed in map(int, args.seeds.split(",")):
            for method in args.methods.split(","):
                settings = [*size, *args.fixed, f"{key}={value}"]
                rid = run_id(args.cell, method, seed, settings)
                run_dir = args.out / "runs" / rid
                if rid in rows:
                    continue
                row = {"cell": args.cell, "method": method, "seed": seed, "recipe": args.recipe, "vary": key,
                       "value": value, "fixed": args.fixed}
                overrides = None
                if not (run_dir / "results.json").exists():
                    overrides = [*cell_keys(args.cell, shared), *settings, f"method.name={method}",
                                 f"train.seed={seed}", "eval.test=false", "train.progress=false",
                                 f"output_dir={args.out / 'runs'}", f"run_name={rid}",
                                 *(["train.resume=auto"] if (run_dir / "checkpoints").is_dir() else [])]
                todo.append((rid, row, overrides))

    def run(rid: str, row: dict, overrides: list[str] | None) -> int:
        if overrides is None:
            return 0
        start = time.time()
        code = run_training(REPO / args.recipe, overrides, args.out / "runs" / rid / "train.log",
                            threads=args.threads, env=env, cwd=REPO)
        print(f"{rid} {key}={row['value']} {row['method']}: exit {code} in {time.time() - start:.0f}s", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run, rid, row, overrides): (rid, row) for rid, row, overrides in todo}
        for future in as_completed(futures):  # rows written from this thread only
            rid, row = futures[future]
            if future.result() != 0:
                continue
            rows = json.loads(store.read_text()) if store.exists() else {}
            rows[rid] = {**row, **summarise(args.out / "runs" / rid)}
            store.write_text(json.dumps(rows, indent=1, sort_keys=True))


def curves(out: Path) -> dict[tuple, dict]:
    """The runs as (cell, varied key, fixed settings) -> method -> value -> runs."""
    series: dict[tuple, dict] = {}
    for row in json.loads((out / "sensitivity.json").read_text()).values():
        series.setdefault((row["cell"], row["vary"], " ".join(sorted(row["fixed"]))), {}).setdefault(
            row["method"], {}).setdefault(row["value"], []).append(row)
    return series


def as_number(value: str) -> float | str:
    """A setting's value as a number where it is one (train.lr=1e-2), else as written (model.lstm_pooling=mean)."""
    try:
        return float(value)
    except ValueError:
        return value


def value_order(value: str) -> tuple:
    """Numbers in numeric order, then words in alphabetical order."""
    number = as_number(value)
    return (0, number, "") if isinstance(number, float) else (1, 0.0, value)


def collect(args: argparse.Namespace) -> None:
    """One table per (cell, varied key, fixed settings): best validation accuracy per method and value."""
    for (cell, key, fixed), methods in sorted(curves(args.out).items()):
        values = sorted({v for m in methods.values() for v in m}, key=value_order)
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


def plot(args: argparse.Namespace) -> None:
    """One panel per (cell, varied key, fixed settings): best validation accuracy against the value, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curves(args.out)
    panels = [k for k, v in sorted(series.items()) if any(len(by_value) > 1 for by_value in v.values())]
    if not panels:
        return
    cols = min(3, len(panels))
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((len(panels) + cols - 1) // cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, panels):
        values = sorted({v for by_value in series[key].values() for v in by_value}, key=value_order)
        numeric = all(isinstance(as_number(v), float) for v in values)
        for method, by_value in sorted(series[key].items()):
            xs = [v for v in values if v in by_value]
            # numbers on a log axis; words (model.norm=pre) and lists (1,1,2,2) one tick each, in value_order
            at = [float(x) if numeric else values.index(x) for x in xs]
            ax.plot(at, [100 * sum(r["best_val_acc"] for r in by_value[x]) / len(by_value[x]) for x in xs], "o-",
                    label=method)
        if numeric:
            ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(values)), values, fontsize=7)
        ax.set_title(f"{key[0]}: {key[1]}\n{key[2].replace('train.batch_size=128', '').strip() or 'recipe'}", fontsize=8)
        ax.set_ylabel("best validation acc. (%)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"curves: {args.plot}")


def settings_of(row: dict) -> str:
    """A run's full setting, the varied key included, as one sortable string."""
    return " ".join(sorted([*row["fixed"], f"{row['vary']}={row['value']}"]))


def leave_one_out(rows: dict, method: str, cells: list[str]) -> dict:
    """Leave-one-dataset-out choice of ``method``'s setting among those run on every cell (validation only).

    A setting's regret on a cell is the cell's best validation accuracy (over the settings) minus its own.
    For each held-out cell the setting with the least mean regret on the *other* cells is chosen, and its
    regret on the held-out cell is what the choice costs a dataset it was not chosen on. The overall choice
    is the setting with the least mean held-out regret over the folds' choices, else the least mean regret.
    """
    acc: dict[str, dict[str, list[float]]] = {}
    for row in rows.values():
        if row["method"] == method and row["cell"] in cells:
            acc.setdefault(settings_of(row), {}).setdefault(row["cell"], []).append(row["best_val_acc"])
    complete = {s: {c: sum(v) / len(v) for c, v in by_cell.items()} for s, by_cell in acc.items()
                if all(c in by_cell for c in cells)}
    if not complete:
        return {"method": method, "cells": cells, "folds": [], "settings": 0}
    best = {c: max(v[c] for v in complete.values()) for c in cells}
    regret = {s: {c: best[c] - v[c] for c in cells} for s, v in complete.items()}
    folds = []
    for held in cells:
        others = [c for c in cells if c != held]
        choice = min(regret, key=lambda s: (sum(regret[s][c] for c in others) / len(others), s))
        folds.append({"held_out": held, "chosen": choice, "held_out_acc": complete[choice][held],
                      "held_out_regret": regret[choice][held], "held_out_best": best[held]})
    overall = min(regret, key=lambda s: (sum(regret[s].values()), s))
    return {"method": method, "cells": cells, "settings": len(complete), "folds": folds, "overall": overall,
            "overall_acc": complete[overall], "overall_regret": regret[overall]}


def choose(args: argparse.Namespace) -> None:
    rows = json.loads((args.out / "sensitivity.json").read_text())
    cells = args.cells.split(",")
    result = [leave_one_out(rows, m, cells) for m in args.methods.split(",")]
    (args.out / "leave_one_out.json").write_text(json.dumps(result, indent=1))
    for r in result:
        print(f"\n{r['method']}: {r['settings']} settings run on every cell of {','.join(cells)}")
        for f in r["folds"]:
            print(f"  held out {f['held_out']:<7} chosen [{f['chosen']}]: {100 * f['held_out_acc']:.2f} "
                  f"(best {100 * f['held_out_best']:.2f}, regret {100 * f['held_out_regret']:.2f})")
        if r["folds"]:
            print(f"  overall [{r['overall']}]: regret " +
                  ", ".join(f"{c} {100 * v:.2f}" for c, v in r["overall_regret"].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="debian")
    parser.add_argument("--recipe", default="recipes/agnews_transformer.yaml")
    parser.add_argument("--methods", default="bp,scpl")
    parser.add_argument("--seeds", default="100")
    parser.add_argument("--vary", default="train.lr=1e-3", help="KEY=V1,V2,...")
    parser.add_argument("--fixed", nargs="*", default=[], help="key=value settings held fixed")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (a GPU takes several)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/sensitivity")
    parser.add_argument("--collect", action="store_true", help="print the tables of what has run")
    parser.add_argument("--choose", action="store_true", help="leave-one-dataset-out choice over --cells")
    parser.add_argument("--cells", default="debian,agnews", help="cells the --choose folds run over")
    parser.add_argument("--plot", type=Path, default=None, help="with --collect: a PNG of every curve")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.collect or args.choose:
        collect(args) if args.collect else choose(args)
        if args.collect and args.plot:
            plot(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
