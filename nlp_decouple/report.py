"""Build a comparison report from finished runs:

    nlp-decouple report RUN_DIR... --out reports/agnews   (the command: nlp_decouple.cli.report)

Runs are grouped by (encoder, method); each group's seeds give mean ± std and a 95% t interval of the mean.
Each method is set against BP of the same encoder, paired by seed: per-seed differences, their mean and a
paired bootstrap interval over seed pairs and test examples (``nlp_decouple.stats``; needs each run's
``test_predictions.json``). Writes ``report.md`` (table with the best value per column in bold, the paired
differences, settings, plots inline), ``report.json`` (everything in the tables, and each run) and PNG
plots: validation accuracy per epoch, accuracy per layer group, throughput and memory, confusion matrices of
each method's best run (chosen on validation accuracy).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from .errors import UserError
from .extras import require
from .registry import METHODS, method_order
from .stats import paired_bootstrap, percentile_interval, t_interval, verdict

# settings shown in the report when every run shares them
SETTINGS = ["data.name", "data.path", "tokenizer.name", "tokenizer.train", "model.encoder", "model.pretrained",
            "model.num_layers", "model.hidden_size", "model.num_heads", "model.norm", "model.pooling",
            "model.lstm_pooling", "model.groups", "method.projection", "method.temperature", "train.epochs",
            "train.batch_size", "train.lr", "train.head_lr", "train.scheduler", "train.warmup_ratio",
            "train.mixed_precision"]
ENCODER_ONLY = {"model.hidden_size": {"transformer", "lstm"}, "model.num_heads": {"transformer"},
                "model.norm": {"transformer"}, "model.pooling": {"transformer", "pretrained"},
                "model.lstm_pooling": {"lstm"}, "model.pretrained": {"pretrained"}}  # shown where every run has one


@dataclass
class Run:
    path: Path
    results: dict
    history: list[dict]
    config: dict
    predictions: dict | None = None  # test_predictions.json: labels and predicted ids at the best epoch

    @property
    def key(self) -> tuple[str, str]:
        """(encoder, method); a pretrained encoder is named by its Hub id or folder (different models are
        different encoders)."""
        encoder = self.results["encoder"]
        if encoder == "pretrained" and self.setting("model.pretrained"):
            encoder = str(self.setting("model.pretrained"))
        return encoder, self.results["method"]

    def setting(self, dotted: str):
        section, name = dotted.split(".")
        return self.config.get(section, {}).get(name)


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)


def load_run(path: Path) -> Run:
    results = path / "results.json"
    if not results.is_file():
        raise UserError(f"{str(path)!r} has no results.json: it is not a finished run (train it, or leave it out)")
    metrics = path / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    predictions = path / "test_predictions.json"  # absent in runs from before it was written
    return Run(path, json.loads(results.read_text()), history, config,
               json.loads(predictions.read_text()) if predictions.is_file() else None)


def group_runs(runs: list[Run]) -> list[Group]:
    encoders = {r.key[0] for r in runs}
    groups: dict[tuple[str, str], Group] = {}
    for run in sorted(runs, key=lambda r: (r.key[0], method_order(r.key[1]), r.results["seed"])):
        encoder, method = run.key
        label = (METHODS[method].display if method in METHODS else method) + (f" ({encoder})" if len(encoders) > 1 else "")
        groups.setdefault(run.key, Group(label)).runs.append(run)
    return list(groups.values())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(group: Group) -> dict:
    res = [r.results for r in group.runs]
    accs, f1s = [100 * r["test_accuracy"] for r in res], [100 * r["test_macro_f1"] for r in res]
    acc, f1 = _mean_std(accs), _mean_std(f1s)
    return {
        "label": group.label, "encoder": group.runs[0].key[0], "method": group.runs[0].key[1],
        "seeds": [r["seed"] for r in res], "runs": [str(r.path) for r in group.runs],
        "test_accuracy_mean": acc[0], "test_accuracy_std": acc[1],
        "test_macro_f1_mean": f1[0], "test_macro_f1_std": f1[1],
        "test_accuracy_ci95": t_interval(accs), "test_macro_f1_ci95": t_interval(f1s),
        "last_epoch_accuracy_mean": statistics.fmean(100 * r["last_epoch_test_accuracy"] for r in res),
        "best_epochs": [r["best_epoch"] for r in res],
        "time_per_epoch_s": statistics.fmean(r["time_per_epoch_s"] for r in res),
        "train_samples_per_s": statistics.fmean(r["train_samples_per_s"] or 0.0 for r in res),
        "peak_memory_mb": statistics.fmean(r["peak_memory_mb"] for r in res),
        "peak_memory_kind": res[0]["peak_memory_kind"],
        "num_parameters": res[0]["num_parameters"],
        "groups_test_accuracy": _layerwise_mean(res),
    }


def _layerwise_mean(results: list[dict]) -> list[dict] | None:
    """Per layer group: mean test accuracy (%) at each run's best epoch, and whether it is an exit or a probe."""
    per_run = [r.get("groups_at_best_epoch") for r in results]
    if not per_run or any(g is None for g in per_run):
        return None
    rows = []
    for k, first in enumerate(per_run[0]):
        values = [g[k]["test"] for g in per_run if k < len(g) and "test" in g[k]]
        if values:
            rows.append({"group": k, "kind": first["kind"], "test_accuracy": 100 * statistics.fmean(values)})
    return rows


# ---------------------------------------------------------------- against BP

def against_bp(group: Group, bp: Group, resamples: int = 2000, seed: int = 0) -> dict:
    """The method minus BP (percentage points), paired by seed, with a paired bootstrap interval of the
    accuracy difference when every paired run has usable per-example test predictions."""
    mine, ref = ({r.results["seed"]: r for r in g.runs} for g in (group, bp))
    seeds = sorted(mine.keys() & ref.keys())
    diffs = {key: [100 * (mine[s].results[key] - ref[s].results[key]) for s in seeds]
             for key in ("test_accuracy", "test_macro_f1")}
    correct, note = _correctness([mine[s] for s in seeds] + [ref[s] for s in seeds]) if seeds else (
        None, f"no seed in common with {bp.label}")
    interval = None
    if correct is not None:
        replicates = paired_bootstrap(correct[:len(seeds)] - correct[len(seeds):], resamples, seed)
        interval = [100 * v for v in percentile_interval(replicates)]
    return {"reference": bp.label, "seeds": seeds,
            "test_accuracy_diff": diffs["test_accuracy"], "test_macro_f1_diff": diffs["test_macro_f1"],
            "test_accuracy_diff_mean": statistics.fmean(diffs["test_accuracy"]) if seeds else None,
            "test_macro_f1_diff_mean": statistics.fmean(diffs["test_macro_f1"]) if seeds else None,
            "interval": interval, "verdict": verdict(interval), "note": note}


def _correctness(runs: list[Run]) -> tuple[np.ndarray | None, str | None]:
    """Per run, per test example: 1 if predicted right. None (and why) when the runs cannot be paired
    example by example."""
    rows, labels = [], None
    for run in runs:
        p, name = run.predictions, run.path.name if run.path else "a run"
        if p is None:
            return None, f"{name} has no test_predictions.json (trained before it was saved)"
        if p["epoch"] != run.results["best_epoch"]:
            return None, f"{name}: test_predictions.json is not from the best epoch"
        if labels is None:
            labels = np.asarray(p["labels"])
        elif not np.array_equal(labels, p["labels"]):
            return None, f"{name} was tested on other examples (or in another order)"
        correct = np.asarray(p["predictions"]) == labels
        if abs(correct.mean() - run.results["test_accuracy"]) > 1e-6:
            return None, f"{name}: test_predictions.json disagrees with results.json"
        rows.append(correct)
    return np.asarray(rows, dtype=np.int8), None


def add_comparisons(groups: list[Group], rows: list[dict], resamples: int, seed: int) -> None:
    """Set each row's ``vs_bp`` against the BP group of its encoder (None for BP and where BP is absent)."""
    bp = {g.runs[0].key[0]: g for g in groups if g.runs[0].key[1] == "bp"}
    for g, row in zip(groups, rows):
        encoder, method = g.runs[0].key
        row["vs_bp"] = against_bp(g, bp[encoder], resamples, seed) if method != "bp" and encoder in bp else None


# ---------------------------------------------------------------- Markdown

COLUMNS = [  # key, header, format, best is max (True) / min (False)
    ("test_accuracy", "test accuracy %", None, True),
    ("test_macro_f1", "macro-F1 %", None, True),
    ("last_epoch_accuracy_mean", "last-epoch acc %", "{:.2f}", True),
    ("time_per_epoch_s", "train time / epoch s", "{:.1f}", False),
    ("train_samples_per_s", "samples/s", "{:.0f}", True),
    ("peak_memory_mb", "peak memory MB", "{:.0f}", False),
    ("num_parameters", "parameters", "{:,}", False),
]


def _ci_cell(row: dict) -> str:
    ci = row.get("test_accuracy_ci95")
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "—"


def _delta_text(vs: dict) -> str:
    """Mean difference to BP and its interval, e.g. ``-1.20 [-2.05, -0.31]``."""
    if not vs["seeds"]:
        return "no common seed"
    text = f"{vs['test_accuracy_diff_mean']:+.2f}"
    return f"{text} (no interval)" if vs["interval"] is None else f"{text} [{vs['interval'][0]:+.2f}, {vs['interval'][1]:+.2f}]"


def _vs_bp_cell(row: dict) -> str:
    vs = row.get("vs_bp")
    if vs is None:
        return "reference" if row.get("method") == "bp" else "—"
    return _delta_text(vs) + (f" {vs['verdict']}" if vs["interval"] else "")


def markdown_table(rows: list[dict]) -> str:
    """The main table; after test accuracy, its 95% interval over seeds and (when BP is in the report) the
    difference to BP with its paired bootstrap interval and verdict."""
    extra = {"95% CI (seeds)": _ci_cell}
    if any(r.get("vs_bp") for r in rows):
        extra["Δ acc vs BP [95% CI]"] = _vs_bp_cell
    headers = [COLUMNS[0][1], *extra, *(c[1] for c in COLUMNS[1:])]
    lines = ["| method | seeds | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    best = {}
    for key, _, _, maximise in COLUMNS:
        values = [r[f"{key}_mean"] if f"{key}_mean" in r else r[key] for r in rows]
        best[key] = max(values) if maximise else min(values)
    for r in rows:
        cells = []
        for key, _, fmt, _ in COLUMNS:
            if fmt is None:  # mean ± std
                value = r[f"{key}_mean"]
                text = f"{value:.2f} ± {r[f'{key}_std']:.2f}"
            else:
                value = r[key]
                text = fmt.format(value)
            cells.append(f"**{text}**" if len(rows) > 1 and value == best[key] else text)
        cells[1:1] = [cell(r) for cell in extra.values()]
        lines.append(f"| {r['label']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_section(rows: list[dict], resamples: int, seed: int) -> list[str]:
    """Markdown lines: per-seed differences to BP and how the intervals were made (empty without BP)."""
    paired = [r for r in rows if r.get("vs_bp")]
    if not paired:
        return []
    lines = ["**Against BP, paired by seed** (method − BP, percentage points)", "",
             "| method | paired seeds | Δ accuracy per seed | Δ macro-F1 per seed | mean Δ accuracy [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    notes = []
    for r in paired:
        vs = r["vs_bp"]
        per_seed = {k: ", ".join(f"{d:+.2f}" for d in vs[k]) or "—" for k in ("test_accuracy_diff", "test_macro_f1_diff")}
        lines.append(f"| {r['label']} | {', '.join(map(str, vs['seeds'])) or 'none'} | {per_seed['test_accuracy_diff']} | "
                     f"{per_seed['test_macro_f1_diff']} | {_delta_text(vs)} | {vs['verdict']} |")
        if vs["note"]:
            notes.append(f"{r['label']}: {vs['note']}")
    lines += ["", "95% CI (seeds): Student t interval of the mean test accuracy over seeds. Δ acc vs BP: mean over "
              f"paired seeds of the test-accuracy difference; its 95% CI is a paired bootstrap ({resamples} resamples, "
              f"RNG seed {seed}) that resamples seed pairs and test examples, the same examples for both methods. "
              "*not detectable*: the interval contains 0, so these runs do not show a difference."]
    if notes:
        lines += ["", "Paired interval unavailable — " + "; ".join(notes) + "."]
    return lines


def shared_settings(runs: list[Run]) -> tuple[dict, list[str]]:
    """Settings every run shares (shown once) and the names of those that differ (besides method/seed)."""
    same, differ = {}, []
    encoders = {r.setting("model.encoder") for r in runs}
    for key in SETTINGS:
        if key in ENCODER_ONLY and not encoders <= ENCODER_ONLY[key]:
            continue
        values = {json.dumps(r.setting(key)) for r in runs}
        if len(values) == 1:
            value = runs[0].setting(key)
            if value is not None:
                same[key] = value
        else:
            differ.append(key)
    return same, differ


def write_markdown(out: Path, title: str, rows: list[dict], runs: list[Run], plots: dict[str, str],
                   resamples: int = 2000, seed: int = 0) -> str:
    same, differ = shared_settings(runs)
    first = runs[0].results
    data = first.get("data", {})
    sizes = ", ".join(f"{k} {v}" for k, v in data.items() if k in ("train", "validation", "test"))
    lines = [f"# {title}", "",
             f"{len(runs)} runs; device `{first.get('device')}`; data {sizes or '?'}. Test accuracy and macro-F1 "
             "are at each run's best-validation epoch (mean ± std over seeds); best value per column in bold. "
             f"Peak memory: {rows[0]['peak_memory_kind']}.", "",
             markdown_table(rows), ""]
    if paired := paired_section(rows, resamples, seed):
        lines += [*paired, ""]
    lines += ["Settings shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in same.items()) + "."]
    if differ:
        lines.append(f"Settings that differ between runs: {', '.join(differ)}.")
    captions = {"val_accuracy": "Validation accuracy per epoch (mean over seeds, band: min–max)",
                "layerwise": "Test accuracy of each layer group at the best epoch (filled: the method's own exit; "
                             "hollow: a linear probe on the group's pooled features)",
                "speed_memory": "Training throughput and peak memory",
                "confusion": "Confusion matrices (test) of each method's best run by validation accuracy"}
    for name, file in plots.items():
        lines += ["", f"**{captions[name]}**", "", f"![{name}]({file})"]
    lines += ["", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


# ---------------------------------------------------------------- plots

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


def plot_layerwise(rows: list[dict], path: Path) -> bool:
    plt = _plt()
    rows = [r for r in rows if r["groups_test_accuracy"]]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        pts = r["groups_test_accuracy"]
        x, y = [p["group"] for p in pts], [p["test_accuracy"] for p in pts]
        line, = ax.plot(x, y, label=r["label"])
        for xi, yi, p in zip(x, y, pts):
            ax.plot(xi, yi, "o", color=line.get_color(), mfc=line.get_color() if p["kind"] == "exit" else "white")
    ax.set_xticks(sorted({p["group"] for r in rows for p in r["groups_test_accuracy"]}))
    _finish_lines(fig, ax, "layer group (0 = embedding)", "test accuracy %", path)
    return True


def plot_speed_memory(rows: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 1.6))
    labels = [r["label"] for r in rows][::-1]
    for ax, key, xlabel in ((axes[0], "train_samples_per_s", "training samples / s"),
                            (axes[1], "peak_memory_mb", f"peak memory MB ({rows[0]['peak_memory_kind']})")):
        values = [r[key] for r in rows][::-1]
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


# ---------------------------------------------------------------- entry points

def build_report(run_dirs: list[Path], out: Path, title: str = "Decoupled vs BP: comparison report",
                 resamples: int = 2000, seed: int = 0) -> dict:
    """``resamples`` and ``seed``: the paired bootstrap's number of resamples and RNG seed."""
    runs = [load_run(Path(p)) for p in run_dirs]
    if not runs:
        raise UserError("no runs to report on: give finished run directories")
    if resamples < 1:
        raise UserError(f"resamples={resamples}: give at least 1 (default 2000)")
    groups = group_runs(runs)
    rows = [summarise(g) for g in groups]
    add_comparisons(groups, rows, resamples, seed)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    if plot_val_accuracy(groups, out / "val_accuracy.png"):
        plots["val_accuracy"] = "val_accuracy.png"
    if plot_layerwise(rows, out / "layerwise.png"):
        plots["layerwise"] = "layerwise.png"
    plot_speed_memory(rows, out / "speed_memory.png")
    plots["speed_memory"] = "speed_memory.png"
    plot_confusions(groups, out / "confusion.png")
    plots["confusion"] = "confusion.png"
    write_markdown(out, title, rows, runs, plots, resamples, seed)
    report = {"title": title, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rows": rows, "plots": plots, "settings": shared_settings(runs)[0],
              "statistics": {"level": 0.95, "seed_interval": "Student t over seeds",
                             "vs_bp_interval": "paired bootstrap over seed pairs and test examples",
                             "bootstrap_resamples": resamples, "bootstrap_seed": seed},
              "runs": [{"path": str(r.path), **{k: r.results[k] for k in (
                  "method", "encoder", "seed", "best_epoch", "validation_accuracy", "test_accuracy", "test_macro_f1",
                  "last_epoch_test_accuracy", "time_per_epoch_s", "train_samples_per_s", "peak_memory_mb",
                  "num_parameters")}} for r in runs]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
