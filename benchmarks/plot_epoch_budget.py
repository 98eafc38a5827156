"""Accuracy against the epoch budget, from long runs of ``benchmarks/sensitivity.py --vary train.epochs=N``.

With a constant learning rate (the recipes' schedule) nothing in a run depends on its epoch budget, so
the best validation accuracy within the first k epochs of one N-epoch run is what a k-epoch run reaches
(the first k epochs are the same computation). Writes one panel per cell: best-so-far validation
accuracy against k, per method, and prints the table at a few budgets.

    python benchmarks/plot_epoch_budget.py docs/results/sensitivity_phase3.json --budgets 3 5 10 20 \
        --png docs/img/epoch_budget.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def budget_curves(rows: dict) -> dict[str, dict[str, list[float]]]:
    """cell -> method -> best validation accuracy within the first k epochs, k = 1..N (the longest run)."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows.values():
        if row["vary"] != "train.epochs":
            continue
        best, so_far = [], 0.0
        for acc in row["curve"]:
            so_far = max(so_far, acc)
            best.append(so_far)
        kept = out.setdefault(row["cell"], {}).get(row["method"])
        if kept is None or len(best) > len(kept):
            out[row["cell"]][row["method"]] = best
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a sensitivity.json (or several merged)")
    p.add_argument("--budgets", type=int, nargs="+", default=[3, 5, 10, 20])
    p.add_argument("--png", type=Path, required=True)
    args = p.parse_args(argv)
    curves = budget_curves(json.loads(args.results.read_text()))
    if not curves:
        p.error(f"{args.results}: no run varied train.epochs")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (cell, methods) in zip(axes[0], sorted(curves.items())):
        for method, best in sorted(methods.items()):
            ax.plot(range(1, len(best) + 1), [100 * a for a in best], marker="o", ms=3, label=method)
            print(cell, method, " ".join(f"{k}:{100 * best[k - 1]:.2f}" for k in args.budgets if k <= len(best)))
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("epoch budget")
        ax.set_ylabel("best validation accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
