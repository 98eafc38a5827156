"""Verdicts of tables made before the t test / TOST rule, re-derived from their per-seed differences.

Reports and protocol tables written before ``nlp_decouple.stats`` gave its verdicts read a paired bootstrap
interval: "not detectable" where it held 0, else "higher" / "lower". This re-reads each comparison's
per-seed test-accuracy differences from such a JSON (``vs_bp.test_accuracy_diff`` of a report's or
``protocol_table.py``'s rows), runs the paired t test and TOST at ``--margin``, applies Holm's correction
across the comparisons of each file (one table, one family), and prints the old and the new verdict side
by side. Nothing is re-trained: the verdicts change, the measurements do not.

    python benchmarks/reverdict.py docs/results/protocol.json docs/results/minilm_debian_report.json \
        --margin 1.0 --out docs/results/reverdict.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nlp_decouple.stats import DEFAULT_MARGIN, holm_adjust, paired_test, verdict


def comparisons(table: dict) -> list[dict]:
    """The table's rows compared with BP: name (cell and label), per-seed differences, the old verdict."""
    return [{"cell": row.get("cell"), "label": row["label"], "seeds": row["vs_bp"]["seeds"],
             "diffs": row["vs_bp"]["test_accuracy_diff"], "old_interval": row["vs_bp"].get("interval"),
             "old_verdict": row["vs_bp"].get("verdict")}
            for row in table["rows"] if row.get("vs_bp") and row["vs_bp"].get("test_accuracy_diff")]


def reverdict(table: dict, margin: float) -> list[dict]:
    """Every comparison of one table with its tests (Holm over the table) and its verdict by the rule."""
    rows = comparisons(table)
    tests = holm_adjust([paired_test(r["diffs"], margin) for r in rows])
    return [{**r, "test": asdict(t) if t else None, "verdict": verdict(t)} for r, t in zip(rows, tests)]


def tables_in(obj: dict, name: str) -> list[tuple[str, dict]]:
    """The tables of one JSON file: the file itself when it has rows, else each value that has (one level)."""
    if "rows" in obj:
        return [(name, obj)]
    return [(f"{name}:{key}", value) for key, value in obj.items() if isinstance(value, dict) and "rows" in value]


def _ci(interval: list[float]) -> str:
    return f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def markdown(name: str, rows: list[dict]) -> str:
    out = [f"{name}: {sum(r['test'] is not None for r in rows)} comparisons, Holm within the table", "",
           "| cell | method | Δ vs BP per seed | mean | 90% t-CI | 95% t-CI | p diff / TOST (Holm) | old: bootstrap 95% CI, verdict | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        old = f"{_ci(r['old_interval'])} {r['old_verdict']}" if r["old_interval"] else str(r["old_verdict"])
        tested = (f"{', '.join(f'{d:+.2f}' for d in r['diffs'])} | {sum(r['diffs']) / len(r['diffs']):+.2f} "
                  f"| {_ci(t['t_ci90'])} | {_ci(t['t_ci95'])} | {t['p_difference_holm']:.3f} / {t['p_equivalence_holm']:.3f}"
                  if t else "— | — | — | — | —")
        out.append(f"| {r['cell'] or '—'} | {r['label']} | {tested} | {old} | {r['verdict']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", type=Path, nargs="+", help="report.json or protocol_table.py JSON files")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="equivalence margin, accuracy points")
    parser.add_argument("--out", type=Path, help="write every table's re-derived comparisons as JSON")
    args = parser.parse_args(argv)
    result = {}
    for path in args.tables:
        for name, table in tables_in(json.loads(path.read_text()), str(path)):
            result[name] = reverdict(table, args.margin)
            print(markdown(name, result[name]), end="\n\n")
    print(f"Verdicts: paired t test and TOST at ±{args.margin:g} points, α = 0.05, Holm within each table.")
    if args.out:
        args.out.write_text(json.dumps({"margin": args.margin, "tables": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
