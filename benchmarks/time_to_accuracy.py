"""Time to accuracy: validation accuracy against cumulative training time, per method, from finished runs.

Reads each run's metrics.jsonl (per epoch: training-loop time, validation accuracy; evaluation time is not
counted), groups runs by (encoder, method), and writes a JSON with every curve, the mean time to reach a
target validation accuracy, and a PNG (mean over seeds, band: min-max).

    python benchmarks/time_to_accuracy.py benchmarks/out/runs_lstm_mlp/agnews-lstm-{bp,scpl}-seed* \
        --targets 0.75 0.80 --out benchmarks/out/time_to_accuracy_lstm.json --png docs/img/time_to_accuracy_lstm.png

``--of-best bp 0.99`` adds, per encoder, the target 0.99 x BP's best validation accuracy (the mean over BP's
seeds of each seed's best) and, per method, each seed's time to it and the ratio of the mean time to BP's.
A seed that never reaches the target counts its whole training time as a lower bound; where only
reference seeds fall short, ``ratio_to_bp_at_most`` bounds the ratio from above.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    results = json.loads((run / "results.json").read_text())
    times = np.cumsum([r["epoch_time_s"] for r in rows]).tolist()
    return {"run": str(run), "encoder": results["encoder"], "method": results["method"], "seed": results["seed"],
            "time_s": times, "validation_accuracy": [r["validation"]["accuracy"] for r in rows]}


def time_to(c: dict, target: float) -> float | None:
    """Training time at the end of the first epoch whose validation accuracy reaches ``target``."""
    return next((t for t, a in zip(c["time_s"], c["validation_accuracy"]) if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.8])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--of-best", nargs=2, metavar=("METHOD", "FRACTION"),
                        help="also the target FRACTION x METHOD's best validation accuracy (mean over its seeds)")
    args = parser.parse_args()
    curves = [curve(r) for r in args.runs]
    relative = {}  # encoder -> the --of-best target of that encoder's runs
    if args.of_best:
        method = args.of_best[0]
        try:
            fraction = float(args.of_best[1])
        except ValueError:
            parser.error(f"--of-best {method} {args.of_best[1]}: FRACTION must be a number, e.g. 0.99")
        for encoder in sorted({c["encoder"] for c in curves}):
            bests = [max(c["validation_accuracy"]) for c in curves if c["method"] == method and c["encoder"] == encoder]
            if not bests:
                parser.error(f"--of-best {method}: no {encoder} run trained {method}")
            relative[encoder] = {"method": method, "fraction": fraction, "best_mean": statistics.fmean(bests),
                                 "target": fraction * statistics.fmean(bests)}
    keys = sorted({(c["encoder"], c["method"]) for c in curves})
    summary = []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key in keys:
        group = [c for c in curves if (c["encoder"], c["method"]) == key]
        n = min(len(c["time_s"]) for c in group)
        t = np.mean([c["time_s"][:n] for c in group], axis=0)
        acc = 100 * np.asarray([c["validation_accuracy"][:n] for c in group])
        line, = ax.plot(t, acc.mean(0), marker="o", ms=3, label=f"{key[1]} ({key[0]})")
        if len(group) > 1:
            ax.fill_between(t, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2)
        row = {"encoder": key[0], "method": key[1], "seeds": [c["seed"] for c in group],
               "time_per_epoch_s": statistics.fmean(c["time_s"][-1] / len(c["time_s"]) for c in group)}
        for target in args.targets:
            reached = [time_to(c, target) for c in group]
            row[f"time_to_{target:g}_s"] = statistics.fmean(reached) if all(r is not None for r in reached) else None
            row[f"seeds_reaching_{target:g}"] = sum(r is not None for r in reached)
        if relative:
            target = relative[key[0]]["target"]
            times = [time_to(c, target) for c in group]
            # a seed that never reaches the target within its run took longer than the run: its whole training
            # time is a lower bound on its time to the target
            at_least = [t if t is not None else c["time_s"][-1] for t, c in zip(times, group)]
            row["of_best"] = {"target": target, "seed_times_s": times,
                              "mean_s": statistics.fmean(times) if all(t is not None for t in times) else None,
                              "mean_s_at_least": statistics.fmean(at_least)}
        summary.append(row)
    for row in summary if relative else []:  # against the reference method of the same encoder
        method = relative[row["encoder"]]["method"]
        reference = next(r["of_best"] for r in summary if (r["encoder"], r["method"]) == (row["encoder"], method))
        ref, floor, mine = reference["mean_s"], reference["mean_s_at_least"], row["of_best"]["mean_s"]
        row["of_best"]["ratio_to_" + method] = mine / ref if ref and mine is not None else None
        # where some reference seeds never got there: every seed of this method did, so the ratio is at most this
        row["of_best"][f"ratio_to_{method}_at_most"] = mine / floor if floor and mine is not None else None
    for target in [*args.targets, *(r["target"] for r in relative.values())]:
        ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training time, s (evaluation excluded)")
    ax.set_ylabel("validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"targets": args.targets, "of_best": relative or None, "summary": summary, "curves": curves},
                                   indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
