"""Build a comparison report from finished runs: ``nlp-decouple report RUN_DIR... --out reports/agnews``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import cli_entry
from ..extras import require_report
from ..report import __doc__ as REPORT_DOC
from ..report import build_report
from ..stats import DEFAULT_MARGIN


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlp-decouple report", description=REPORT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (with results.json)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="report directory (default: ./report)")
    parser.add_argument("--title", default="Decoupled vs BP: comparison report")
    parser.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="the bootstrap's RNG seed (default 0)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="equivalence margin in accuracy points for the verdicts (default %(default)g)")
    return parser.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_report("nlp-decouple report")
    report = build_report(args.runs, args.out, args.title, args.resamples, args.bootstrap_seed, args.margin)
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.md'} ({len(report['runs'])} runs, {len(report['plots'])} plots)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
