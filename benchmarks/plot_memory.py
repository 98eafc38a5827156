"""Plot memory_depth JSON files: peak training memory against depth, BP vs SCPL, one panel per encoder.

    python benchmarks/plot_memory.py benchmarks/out/memory_depth_lstm.json benchmarks/out/memory_depth_transformer.json \
        --out docs/img/memory_depth.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img/memory_depth.png"))
    args = parser.parse_args()
    reports = [json.loads(f.read_text()) for f in args.files]
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports):
        depths = [r["depth"] for r in report["rows"]]
        for method, style in (("bp", "o-"), ("scpl", "s-")):
            ax.plot(depths, [r[f"{method}_mb"] for r in report["rows"]], style, label=method.upper())
        ax.set_title(f"{report['encoder']} (batch {report['batch']}, length {report['length']}, d={report['hidden']})")
        ax.set_xlabel("encoder blocks")
        ax.set_ylabel(f"peak training memory, MB\n({report['measure']})")
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
