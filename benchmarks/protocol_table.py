"""Collect the cells of ``benchmarks/protocol.sh`` into one JSON and the Markdown table of docs/benchmarks.md.

    python benchmarks/protocol_table.py runs/protocol --floor debian_transformer=benchmarks/out/tfidf_debian_8000.json \
        --floor agnews_transformer=benchmarks/out/tfidf_agnews.json --out docs/results/protocol.json

Per cell and method: the tuned values and their validation accuracy (from the study's provenance in
``tune/<method>.yaml``), then the report's test numbers on the reporting seeds (mean ± std, the 95% t
interval over seeds, the paired differences against BP with their paired bootstrap interval and verdict).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
            "vs_bp": vs or None})
    return rows


def markdown(rows: list[dict], floors: dict[str, dict]) -> str:
    out = [("| cell | method | tuned (trials) | tuning val % | test acc % mean ± std | 95% CI (seeds) | macro-F1 % "
            "| Δ vs BP per seed | Δ 95% CI (paired bootstrap) | verdict | s/epoch |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in dict.fromkeys(r["cell"] for r in rows):
        for r in (r for r in rows if r["cell"] == cell):
            vs = r["vs_bp"]
            diffs = ", ".join(f"{d:+.2f}" for d in vs["test_accuracy_diff"]) if vs else "—"
            interval = f"[{vs['interval'][0]:+.2f}, {vs['interval'][1]:+.2f}]" if vs and vs.get("interval") else "—"
            ci = r["test_accuracy_ci95"]
            out.append(f"| {cell} | {r['label']} | {short(r['tuned'])} ({r['trials']}) | {r['tuning_validation_accuracy']:.2f} "
                       f"| {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | [{ci[0]:.2f}, {ci[1]:.2f}] "
                       f"| {r['test_macro_f1_mean']:.2f} | {diffs} | {interval} | {vs['verdict'] if vs else '—'} "
                       f"| {r['time_per_epoch_s']:.0f} |")
        if cell in floors:
            s = floors[cell]["summary"]
            cs = ", ".join(str(run["C"]) for run in floors[cell]["runs"])
            out.append(f"| {cell} | TF-IDF + linear SVM (floor) | C {cs} on validation | — | {100 * s['test_accuracy_mean']:.2f} ± "
                       f"{100 * s['test_accuracy_std']:.2f} | — | {100 * s['test_macro_f1_mean']:.2f} | — | — | — | — |")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "floors": floors}, indent=2) + "\n")
    print(markdown(rows, floors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
