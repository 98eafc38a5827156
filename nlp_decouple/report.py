"""Build a comparison report from finished runs:

    nlp-decouple report RUN_DIR... --out reports/agnews [--margin 1.0]   (the command: nlp_decouple.cli.report)

Runs are grouped by (encoder, method); each group's seeds give mean ± std and a 95% t interval of the mean.
Each method is set against BP of the same encoder, paired by seed (``nlp_decouple.comparisons``): per-seed
differences, a paired t test and an equivalence test at a declared margin with Holm's correction across the
report's comparisons, one verdict each, and a descriptive paired bootstrap interval over seed pairs and
test examples (needs each run's ``test_predictions.json``). Writes ``report.md`` (``report_markdown``),
``report.json`` (the typed rows of ``report_data`` as JSON, the statistics' settings, and each run) and PNG
plots (``report_plots``).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .comparisons import add_comparisons
from .errors import UserError
from .registry import METHODS, method_order
from .report_data import SCHEMA_VERSION, SOURCE_FILE, Group, LayerAccuracy, MethodRow, Run
from .report_markdown import shared_settings, write_markdown
from .report_plots import plot_confusions, plot_layerwise, plot_speed_memory, plot_val_accuracy
from .stats import ALPHA, DEFAULT_MARGIN, t_interval



def load_run(path: Path) -> Run:
    results = path / "results.json"
    if not results.is_file():
        raise UserError(f"{str(path)!r} has no results.json: it is not a finished run (train it, or leave it out)")
    metrics = path / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}

    def optional(name: str) -> dict | None:  # absent in runs from before it was written, or not made by compare
        return json.loads((path / name).read_text()) if (path / name).is_file() else None

    return Run(path, json.loads(results.read_text()), history, config, optional("test_predictions.json"),
               optional(SOURCE_FILE))


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


def summarise(group: Group) -> MethodRow:
    res = [r.results for r in group.runs]
    accs, f1s = [100 * r["test_accuracy"] for r in res], [100 * r["test_macro_f1"] for r in res]
    acc, f1 = _mean_std(accs), _mean_std(f1s)
    recipes = {r.tuned_recipe() for r in group.runs}
    return MethodRow(
        label=group.label, encoder=group.runs[0].key[0], method=group.runs[0].key[1],
        seeds=[r["seed"] for r in res], runs=[str(r.path) for r in group.runs],
        test_accuracy_mean=acc[0], test_accuracy_std=acc[1], test_macro_f1_mean=f1[0], test_macro_f1_std=f1[1],
        test_accuracy_ci95=t_interval(accs), test_macro_f1_ci95=t_interval(f1s),
        last_epoch_accuracy_mean=statistics.fmean(100 * r["last_epoch_test_accuracy"] for r in res),
        best_epochs=[r["best_epoch"] for r in res],
        time_per_epoch_s=statistics.fmean(r["time_per_epoch_s"] for r in res),
        train_samples_per_s=statistics.fmean(r["train_samples_per_s"] or 0.0 for r in res),
        peak_memory_mb=statistics.fmean(r["peak_memory_mb"] for r in res),
        peak_memory_kind=res[0]["peak_memory_kind"], num_parameters=res[0]["num_parameters"],
        groups_test_accuracy=_layerwise_mean(res),
        tuned_recipe=next(iter(recipes)) if len(recipes) == 1 else None)


def _layerwise_mean(results: list[dict]) -> list[LayerAccuracy] | None:
    """Per layer group: mean test accuracy (%) at each run's best epoch, and whether it is an exit or a probe."""
    per_run = [r.get("groups_at_best_epoch") for r in results]
    if not per_run or any(g is None for g in per_run):
        return None
    rows = []
    for k, first in enumerate(per_run[0]):
        values = [g[k]["test"] for g in per_run if k < len(g) and "test" in g[k]]
        if values:
            rows.append(LayerAccuracy(group=k, kind=first["kind"], test_accuracy=100 * statistics.fmean(values)))
    return rows


def build_report(run_dirs: list[Path], out: Path, title: str = "Decoupled vs BP: comparison report",
                 resamples: int = 2000, seed: int = 0, margin: float = DEFAULT_MARGIN) -> dict:
    """Write the report and return report.json's content. ``resamples`` and ``seed``: the paired bootstrap's
    number of resamples and RNG seed; ``margin``: the equivalence margin in accuracy points."""
    runs = [load_run(Path(p)) for p in run_dirs]
    if not runs:
        raise UserError("no runs to report on: give finished run directories")
    if resamples < 1:
        raise UserError(f"resamples={resamples}: give at least 1 (default 2000)")
    if not margin > 0:
        raise UserError(f"margin={margin}: give the equivalence margin in accuracy points, > 0 (default {DEFAULT_MARGIN:g})")
    groups = group_runs(runs)
    rows = [summarise(g) for g in groups]
    tested = add_comparisons(groups, rows, margin, resamples, seed)
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
    write_markdown(out, title, rows, runs, plots, margin, tested, resamples, seed)
    report = {"schema_version": SCHEMA_VERSION, "title": title,
              "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rows": [asdict(r) for r in rows], "plots": plots, "settings": shared_settings(runs)[0],
              "statistics": {
                  "seed_interval": "Student t interval of the mean over seeds, 95%",
                  "difference_test": "paired t test on the per-seed accuracy differences, two-sided, H0 mean = 0",
                  "equivalence_test": "two one-sided paired t tests (TOST), H0 mean <= -margin and H0 mean >= +margin",
                  "alpha": ALPHA, "margin": margin,
                  "correction": "Holm, across the tested comparisons; difference and equivalence tests separately",
                  "comparisons": tested, "t_interval_levels": [1 - 2 * ALPHA, 1 - ALPHA],
                  "vs_bp_bootstrap": "two-level paired bootstrap over seed pairs and test examples, 95%, descriptive",
                  "bootstrap_resamples": resamples, "bootstrap_seed": seed},
              "runs": [{"path": str(r.path), **{k: r.results[k] for k in (
                  "method", "encoder", "seed", "best_epoch", "validation_accuracy", "test_accuracy", "test_macro_f1",
                  "last_epoch_test_accuracy", "time_per_epoch_s", "train_samples_per_s", "peak_memory_mb",
                  "num_parameters")}} for r in runs]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
