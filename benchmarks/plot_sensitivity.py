"""How far each method's validation accuracy falls when one setting leaves the recipe's value: one panel per
(setting, cell), from the runs of ``benchmarks/sensitivity.py``.

A run joins the curve of the key it varied when every other setting it names is the recipe's (``--recipe-value``
lists them; a method's own value is written ``method:key=value``); its x is the varied value. The recipe's
own run (every setting at the recipe's value) is the marked point of each curve. Runs made while the recipe
file held other values name them after their file: ``PATH@key=value,...`` (what those runs did not set).

    python benchmarks/plot_sensitivity.py docs/results/sensitivity_phase{1,2}.json@model.norm=post,method.projection=identity \
        docs/results/sensitivity_phase3.json \
        --recipe recipes/agnews_transformer.yaml --keys train.lr method.temperature train.batch_size \
        --recipe-value train.batch_size=128 model.norm=pre method.projection=mlp_bn method.temperature=0.1 \
            bp:train.lr=3e-3 scpl:train.lr=1e-2 --png docs/img/sensitivity.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity import as_number  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def recipe_values(items: list[str]) -> dict[str | None, dict[str, float | str]]:
    """``key=value`` for every method, ``method:key=value`` for one: method (None: all) -> key -> value."""
    out: dict[str | None, dict] = {None: {}}
    for item in items:
        scope, _, setting = item.rpartition(":")
        key, _, value = setting.partition("=")
        out.setdefault(scope or None, {})[key] = as_number(value)
    return out


def read_runs(specs: list[str]) -> dict:
    """``PATH[@key=value,...]`` -> the runs of every file (a run id once), each with the settings it did not
    name (``unnamed``) as its file's spec gives them."""
    rows: dict = {}
    for spec in specs:
        path, _, unnamed = spec.partition("@")
        for rid, row in json.loads(Path(path).read_text()).items():
            rows[rid] = {**row, "unnamed": [s for s in unnamed.split(",") if s]}
    return rows


def points(rows: dict, recipe: str, keys: list[str], values: dict) -> dict:
    """(key, cell) -> method -> x -> accuracies; the recipe's own run lands at the recipe's value of every key."""
    out: dict = {}
    for row in rows.values():
        if row["recipe"] != recipe or row["vary"] == "train.epochs":
            continue
        own = {**values[None], **values.get(row["method"], {})}
        named = dict(s.partition("=")[::2] for s in [*row.get("unnamed", []), *row["fixed"]]) | {row["vary"]: row["value"]}
        off = {k: as_number(v) for k, v in named.items() if own.get(k) != as_number(v)}
        if len(off) > 1 or (off and next(iter(off)) not in keys):
            continue  # more than one setting away from the recipe, or a key not plotted
        for key in keys if not off else off:
            x = off.get(key, own.get(key))
            if x is not None:
                out.setdefault((key, row["cell"]), {}).setdefault(row["method"], {}).setdefault(x, []).append(
                    100 * row["best_val_acc"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", metavar="PATH[@KEY=VALUE,...]", help="sensitivity.json files (merged; a run id once)")
    p.add_argument("--recipe", default="recipes/agnews_transformer.yaml", help="the runs' --recipe")
    p.add_argument("--keys", nargs="+", default=["train.lr", "method.temperature", "train.batch_size"])
    p.add_argument("--recipe-value", nargs="+", default=[], metavar="[METHOD:]KEY=VALUE")
    p.add_argument("--cells", nargs="+", default=None, help="columns, in order (default: every cell)")
    p.add_argument("--png", type=Path, required=True)
    args = p.parse_args(argv)
    rows = read_runs(args.results)
    values = recipe_values(args.recipe_value)
    data = points(rows, args.recipe, args.keys, values)
    cells = args.cells or sorted({cell for _, cell in data})
    methods = sorted({m for by_method in data.values() for m in by_method})
    color = {m: f"C{i}" for i, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(len(args.keys), len(cells), figsize=(3.6 * len(cells), 2.9 * len(args.keys)), squeeze=False)
    for i, key in enumerate(args.keys):
        for j, cell in enumerate(cells):
            ax, ticks = axes[i][j], []
            for method, by_x in sorted(data.get((key, cell), {}).items()):
                if len(by_x) < 2:
                    continue  # only the recipe's run: the method was not varied in this key here
                xs = sorted(by_x)
                ys = [sum(by_x[x]) / len(by_x[x]) for x in xs]
                ax.plot(xs, ys, "o-", ms=3, label=method, color=color[method])
                mark = {**values[None], **values.get(method, {})}.get(key)
                if mark in by_x:
                    ax.plot([mark], [sum(by_x[mark]) / len(by_x[mark])], "*", ms=11, color=color[method])
                ticks = sorted(set(ticks) | set(xs))
                print(f"{cell:<7} {key:<19} {method:<5} " + "  ".join(f"{x:g}:{y:.2f}" for x, y in zip(xs, ys)))
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks], fontsize=7)
            ax.minorticks_off()
            ax.set_title(f"{cell}: {key}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("best validation acc. %", fontsize=8)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
