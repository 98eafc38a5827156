"""report.md: the main table (best value per column in bold), the comparisons against BP with their
tests and verdicts and what was computed, the shared settings, the plots inline."""
from __future__ import annotations

import json
from pathlib import Path

from .report_data import MethodRow, Run, VsBP
from .stats import ALPHA, MIN_SEEDS

# settings shown in the report when every run shares them
SETTINGS = ["data.name", "data.path", "tokenizer.name", "tokenizer.train", "model.encoder", "model.pretrained",
            "model.num_layers", "model.hidden_size", "model.num_heads", "model.norm", "model.pooling",
            "model.lstm_pooling", "model.groups", "method.projection", "method.temperature", "train.epochs",
            "train.batch_size", "train.lr", "train.head_lr", "train.scheduler", "train.warmup_ratio",
            "train.mixed_precision"]
ENCODER_ONLY = {"model.hidden_size": {"transformer", "lstm"}, "model.num_heads": {"transformer"},
                "model.norm": {"transformer"}, "model.pooling": {"transformer", "pretrained"},
                "model.lstm_pooling": {"lstm"}, "model.pretrained": {"pretrained"}}  # shown where every run has one

COLUMNS = [  # row field (or field prefix of *_mean / *_std), header, format, best is max (True) / min (False)
    ("test_accuracy", "test accuracy %", None, True),
    ("test_macro_f1", "macro-F1 %", None, True),
    ("last_epoch_accuracy_mean", "last-epoch acc %", "{:.2f}", True),
    ("time_per_epoch_s", "train time / epoch s", "{:.1f}", False),
    ("train_samples_per_s", "samples/s", "{:.0f}", True),
    ("peak_memory_mb", "peak memory MB", "{:.0f}", False),
    ("num_parameters", "parameters", "{:,}", False),
]


def _interval(ci: list[float] | None, sign: str = "+") -> str:
    return f"[{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]" if ci else "—"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ci_cell(row: MethodRow) -> str:
    return _interval(row.test_accuracy_ci95, "")


def _vs_bp_cell(row: MethodRow) -> str:
    """Mean difference to BP, its 90% paired t interval and the verdict, e.g. ``-1.20 [-2.05, -0.31] lower``."""
    vs = row.vs_bp
    if vs is None:
        return "reference" if row.method == "bp" else "—"
    if not vs.seeds:
        return "no common seed"
    ci = f" {_interval(vs.test.t_ci90)}" if vs.test else ""
    return f"{vs.test_accuracy_diff_mean:+.2f}{ci} {vs.verdict}"


def _value(row: MethodRow, key: str):
    return getattr(row, f"{key}_mean") if hasattr(row, f"{key}_mean") else getattr(row, key)


def markdown_table(rows: list[MethodRow]) -> str:
    """The main table; after test accuracy, its 95% interval over seeds and (when BP is in the report) the
    difference to BP with its 90% paired t interval and verdict."""
    extra = {"95% CI (seeds)": _ci_cell}
    if any(r.vs_bp for r in rows):
        extra["Δ acc vs BP [90% t-CI], verdict"] = _vs_bp_cell
    headers = [COLUMNS[0][1], *extra, *(c[1] for c in COLUMNS[1:])]
    lines = ["| method | seeds | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    best = {}
    for key, _, _, maximise in COLUMNS:
        values = [_value(r, key) for r in rows]
        best[key] = max(values) if maximise else min(values)
    for r in rows:
        cells = []
        for key, _, fmt, _ in COLUMNS:
            value = _value(r, key)
            text = f"{value:.2f} ± {getattr(r, f'{key}_std'):.2f}" if fmt is None else fmt.format(value)
            cells.append(f"**{text}**" if len(rows) > 1 and value == best[key] else text)
        cells[1:1] = [cell(r) for cell in extra.values()]
        lines.append(f"| {r.label} | {len(r.seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_line(label: str, vs: VsBP) -> str:
    per_seed = [", ".join(f"{d:+.2f}" for d in diffs) or "—" for diffs in (vs.test_accuracy_diff, vs.test_macro_f1_diff)]
    mean = f"{vs.test_accuracy_diff_mean:+.2f}" if vs.seeds else "—"
    t = vs.test
    tests = (f"{_interval(t.t_ci90)} | {_interval(t.t_ci95)} | {_interval(vs.bootstrap_ci95)} | "
             f"{_p(t.p_difference)} ({_p(t.p_difference_holm)}) | {_p(t.p_equivalence)} ({_p(t.p_equivalence_holm)})"
             if t else f"— | — | {_interval(vs.bootstrap_ci95)} | — | —")
    return (f"| {label} | {', '.join(map(str, vs.seeds)) or 'none'} | {per_seed[0]} | {per_seed[1]} | {mean} | "
            f"{tests} | {vs.verdict} |")


def method_text(margin: float, tested: int, resamples: int, seed: int) -> str:
    """What the comparison table computed, as one paragraph of report.md."""
    m = f"{margin:g}"
    return (f"Verdicts: per comparison, on the per-seed test-accuracy differences d (method − BP, points), a paired t "
            f"test of mean d = 0 (two-sided) and an equivalence test at the declared margin ±{m} points (two one-sided "
            f"t tests, TOST: mean d ≤ −{m} and mean d ≥ +{m} both rejected), each at α = {ALPHA:g}, with Holm's "
            f"correction across the {tested} tested comparison{'s' if tested != 1 else ''} of this report (applied "
            "to the difference tests and, separately, to the equivalence tests); p-values are shown raw (Holm). "
            "*higher* / *lower*: the difference test rejects; "
            f"*equivalent within ±{m}*: TOST rejects; *higher/lower, within ±{m}*: both (a difference smaller than the "
            f"margin); *inconclusive*: neither, so these runs neither show a difference nor rule out a difference of ±{m} points "
            f"(or fewer than {MIN_SEEDS} paired seeds: no test). Intervals are not corrected for multiplicity: 90% "
            "t-CI, the paired t interval at level 1 − 2α (inside ±margin exactly when TOST rejects before correction); "
            "95% t-CI, the one matching the difference test; 95% bootstrap, a two-level paired bootstrap over seed "
            f"pairs and test examples, the same examples for both methods ({resamples} resamples, RNG seed {seed}), "
            "descriptive only: with few seeds its seed level cannot leave the range of the per-seed differences. "
            "95% CI (seeds): Student t interval of a method's mean test accuracy over its seeds.")


def paired_section(rows: list[MethodRow], margin: float, tested: int, resamples: int, seed: int) -> list[str]:
    """Markdown lines: per-seed differences to BP, the tests and verdicts, and how they were made (empty
    without BP)."""
    paired = [r for r in rows if r.vs_bp]
    if not paired:
        return []
    lines = [f"**Against BP, paired by seed** (method − BP, percentage points; margin ±{margin:g})", "",
             "| method | paired seeds | Δ accuracy per seed | Δ macro-F1 per seed | mean Δ accuracy | 90% t-CI | 95% t-CI "
             f"| 95% bootstrap | p difference (Holm) | p TOST ±{margin:g} (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_paired_line(r.label, r.vs_bp) for r in paired]
    lines += ["", method_text(margin, tested, resamples, seed)]
    notes = [f"{r.label}: {r.vs_bp.note}" for r in paired if r.vs_bp.note]
    if notes:
        lines += ["", "Bootstrap interval unavailable — " + "; ".join(notes) + "."]
    involved = {r.label for r in paired} | {r.vs_bp.reference for r in paired}
    untuned = [r.label for r in rows if r.label in involved and r.tuned_recipe is None]
    if untuned:
        lines += ["", f"**About these settings, not the methods:** the runs of {', '.join(untuned)} do not come from a "
                  "recipe written by `nlp-decouple tune` for their method (with its tuned values kept), so each verdict "
                  "compares these settings, not the methods at their best. Tune every method on validation first "
                  "(`nlp-decouple tune`, then `nlp-decouple compare` on each tuned recipe: docs/comparing.md)."]
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


CAPTIONS = {"val_accuracy": "Validation accuracy per epoch (mean over seeds, band: min–max)",
            "layerwise": "Test accuracy of each layer group at the best epoch (filled: the method's own exit; "
                         "hollow: a linear probe on the group's pooled features)",
            "speed_memory": "Training throughput and peak memory",
            "confusion": "Confusion matrices (test) of each method's best run by validation accuracy"}


def write_markdown(out: Path, title: str, rows: list[MethodRow], runs: list[Run], plots: dict[str, str],
                   margin: float, tested: int, resamples: int = 2000, seed: int = 0) -> str:
    same, differ = shared_settings(runs)
    first = runs[0].results
    data = first.get("data", {})
    sizes = ", ".join(f"{k} {v}" for k, v in data.items() if k in ("train", "validation", "test"))
    lines = [f"# {title}", "",
             f"{len(runs)} runs; device `{first.get('device')}`; data {sizes or '?'}. Test accuracy and macro-F1 "
             "are at each run's best-validation epoch (mean ± std over seeds); best value per column in bold. "
             f"Peak memory: {rows[0].peak_memory_kind}.", "",
             markdown_table(rows), ""]
    if paired := paired_section(rows, margin, tested, resamples, seed):
        lines += [*paired, ""]
    lines += ["Settings shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in same.items()) + "."]
    if differ:
        lines.append(f"Settings that differ between runs: {', '.join(differ)}.")
    for name, file in plots.items():
        lines += ["", f"**{CAPTIONS[name]}**", "", f"![{name}]({file})"]
    lines += ["", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
