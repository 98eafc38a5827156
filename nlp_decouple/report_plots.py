"""The report's PNG plots: validation accuracy per epoch, accuracy per layer group, throughput and memory,
confusion matrices of each method's best run (chosen on validation accuracy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .extras import require
from .report_data import Group, MethodRow


def _plt():
    matplotlib = require("matplotlib", "the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_accuracy(groups: list[Group], path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for g in groups:
        curves = [[100 * row["validation"]["accuracy"] for row in r.history] for r in g.runs if r.history]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        values = np.asarray([c[:n] for c in curves])
        epochs = np.arange(1, n + 1)
        line, = ax.plot(epochs, values.mean(0), marker="o", ms=3, label=g.label)
        if len(curves) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish_lines(fig, ax, "epoch", "validation accuracy %", path)
    return True


def plot_layerwise(rows: list[MethodRow], path: Path) -> bool:
    plt = _plt()
    rows = [r for r in rows if r.groups_test_accuracy]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        pts = r.groups_test_accuracy
        x, y = [p.group for p in pts], [p.test_accuracy for p in pts]
        line, = ax.plot(x, y, label=r.label)
        for xi, yi, p in zip(x, y, pts):
            ax.plot(xi, yi, "o", color=line.get_color(), mfc=line.get_color() if p.kind == "exit" else "white")
    ax.set_xticks(sorted({p.group for r in rows for p in r.groups_test_accuracy}))
    _finish_lines(fig, ax, "layer group (0 = embedding)", "test accuracy %", path)
    return True


def plot_speed_memory(rows: list[MethodRow], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 1.6))
    labels = [r.label for r in rows][::-1]
    for ax, key, xlabel in ((axes[0], "train_samples_per_s", "training samples / s"),
                            (axes[1], "peak_memory_mb", f"peak memory MB ({rows[0].peak_memory_kind})")):
        values = [getattr(r, key) for r in rows][::-1]
        bars = ax.barh(labels, values, color="tab:blue")
        ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, max(values) * 1.2 or 1)
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_confusions(groups: list[Group], path: Path) -> None:
    plt = _plt()
    cols = min(len(groups), 3 if len(groups) > 4 else len(groups))
    rows = -(-len(groups) // cols)
    classes = len(groups[0].runs[0].results["confusion_matrix"])
    side = max(3.3, 0.32 * classes + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, (side + 0.3) * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, groups):
        best = max(g.runs, key=lambda r: r.results["validation_accuracy"])
        cm = np.asarray(best.results["confusion_matrix"], dtype=float)
        rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        names = best.results.get("label_names") or [str(i) for i in range(len(cm))]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(cm)):
            for j in range(len(cm) if len(cm) <= 10 else 0):  # counts only where they stay legible
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.6 else "black")
        ax.set_title(f"{g.label}, seed {best.results['seed']}\nacc {100 * best.results['test_accuracy']:.1f}%", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    _save(fig, path)


def _finish_lines(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    """Labels, grid and legend of a per-method line plot, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
