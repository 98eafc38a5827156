"""Collect the cells of ``benchmarks/protocol.sh`` into one JSON and the Markdown table of docs/benchmarks.md.

    python benchmarks/protocol_table.py runs/protocol --floor debian_transformer=benchmarks/out/tfidf_debian_8000.json \
        --floor agnews_transformer=benchmarks/out/tfidf_agnews.json --out docs/results/protocol.json

Per cell and method: the tuned values and their validation accuracy (from the study's provenance in
``tune/<method>.yaml``), then the report's test numbers on the reporting seeds (mean ± std, the 95% t
interval over seeds, the paired differences against BP with their 90% paired t interval, the descriptive paired
bootstrap interval, and p-values and verdicts at the reports' equivalence margin with Holm's correction applied
again across every comparison of the table (each cell's report corrects only over its own).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nlp_decouple.stats import PairedTest, holm_adjust, verdict

PROVENANCE = "# tune-provenance: "


def provenance(recipe: Path) -> dict:
    for line in recipe.read_text().splitlines():
        if line.startswith(PROVENANCE):
            return json.loads(line[len(PROVENANCE):])
    raise SystemExit(f"{recipe}: no tune-provenance line (not written by nlp-decouple tune)")


def short(params: dict) -> str:
    names = {"train.lr": "lr", "method.temperature": "τ", "method.ce_weight": "ce_weight", "method.label_dim": "label_dim",
             "method.al_activation": "activation"}
    return ", ".join(f"{names.get(k, k)} {v:.2g}" if isinstance(v, float) else f"{names.get(k, k)} {v}"
                     for k, v in params.items())


def cell_rows(cell_dir: Path) -> list[dict]:
    report = json.loads((cell_dir / "report" / "report.json").read_text())
    if report.get("schema_version", 1) < 2:
        raise SystemExit(f"{cell_dir}/report: made before the t test / TOST verdicts; rebuild it with nlp-decouple report")
    rows = []
    for row in report["rows"]:
        prov = provenance(cell_dir / "tune" / f"{row['method']}.yaml")
        vs = row.get("vs_bp") or {}
        rows.append({
            "cell": cell_dir.name, "method": row["method"], "label": row["label"], "seeds": row["seeds"],
            "tuned": prov["params"], "trials": prov["finished"], "tuning_validation_accuracy": 100 * prov["best_value"],
            "test_accuracy_mean": row["test_accuracy_mean"], "test_accuracy_std": row["test_accuracy_std"],
            "test_accuracy_ci95": row["test_accuracy_ci95"], "test_macro_f1_mean": row["test_macro_f1_mean"],
            "best_epochs": row["best_epochs"], "time_per_epoch_s": row["time_per_epoch_s"],
            "peak_memory_mb": row["peak_memory_mb"], "groups_test_accuracy": row["groups_test_accuracy"],
            "vs_bp": vs or None, "margin": report["statistics"]["margin"],
            "comparisons": report["statistics"]["comparisons"]})
    return rows


def correct_across_table(rows: list[dict]) -> int:
    """Holm-adjust every row's tests over all the table's tested comparisons and reword the verdicts; returns
    that number of comparisons."""
    compared = [r["vs_bp"] for r in rows if r["vs_bp"]]
    if len({r["margin"] for r in rows if r["vs_bp"]}) > 1:
        raise SystemExit("the cells' reports use different equivalence margins: rebuild them with one --margin")
    tests = holm_adjust([PairedTest(**vs["test"]) if vs["test"] else None for vs in compared])
    for vs, test in zip(compared, tests):
        vs["test"], vs["verdict"] = (asdict(test) if test else None), verdict(test)
    return sum(t is not None for t in tests)


def markdown(rows: list[dict], floors: dict[str, dict]) -> str:
    out = [("| cell | method | tuned (trials) | tuning val % | test acc % mean ± std | 95% CI (seeds) | macro-F1 % "
            "| Δ vs BP per seed | Δ 90% t-CI | p diff / TOST (Holm) | Δ 95% CI (paired bootstrap) | verdict | s/epoch |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in dict.fromkeys(r["cell"] for r in rows):
        for r in (r for r in rows if r["cell"] == cell):
            vs = r["vs_bp"]
            diffs = ", ".join(f"{d:+.2f}" for d in vs["test_accuracy_diff"]) if vs else "—"
            boot = vs.get("bootstrap_ci95") if vs else None
            interval = f"[{boot[0]:+.2f}, {boot[1]:+.2f}]" if boot else "—"
            test = vs.get("test") if vs else None
            t_ci = f"[{test['t_ci90'][0]:+.2f}, {test['t_ci90'][1]:+.2f}]" if test else "—"
            p = f"{test['p_difference_holm']:.3f} / {test['p_equivalence_holm']:.3f}" if test else "—"
            ci = r["test_accuracy_ci95"]
            out.append(f"| {cell} | {r['label']} | {short(r['tuned'])} ({r['trials']}) | {r['tuning_validation_accuracy']:.2f} "
                       f"| {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | [{ci[0]:.2f}, {ci[1]:.2f}] "
                       f"| {r['test_macro_f1_mean']:.2f} | {diffs} | {t_ci} | {p} | {interval} | {vs['verdict'] if vs else '—'} "
                       f"| {r['time_per_epoch_s']:.0f} |")
        if cell in floors:
            s = floors[cell]["summary"]
            cs = ", ".join(str(run["C"]) for run in floors[cell]["runs"])
            out.append(f"| {cell} | TF-IDF + linear SVM (floor) | C {cs} on validation | — | {100 * s['test_accuracy_mean']:.2f} ± "
                       f"{100 * s['test_accuracy_std']:.2f} | — | {100 * s['test_macro_f1_mean']:.2f} | — | — | — | — | — | — |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="OUT_ROOT of benchmarks/protocol.sh")
    parser.add_argument("--cells", nargs="+", default=["debian_transformer", "debian_lstm", "agnews_transformer", "agnews_lstm"])
    parser.add_argument("--floor", action="append", default=[], metavar="CELL=JSON", help="tfidf_floor.py output for a cell")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    floors = {}
    for item in args.floor:
        cell, _, path = item.partition("=")
        floors[cell] = json.loads(Path(path).read_text())
    rows = [r for cell in args.cells if (args.root / cell / "report" / "report.json").exists()
            for r in cell_rows(args.root / cell)]
    comparisons = correct_across_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "floors": floors, "holm_comparisons": comparisons}, indent=2) + "\n")
    print(markdown(rows, floors))
    margin = next((r["margin"] for r in rows if r["vs_bp"]), None)
    print(f"\nVerdicts: paired t test and TOST at ±{margin:g} points, α = 0.05, Holm across the {comparisons} "
          "comparisons of this table." if margin else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
