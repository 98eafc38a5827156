"""Accuracy, time per epoch and peak memory of every method x encoder x seed on one dataset.

Each run is a fresh process (`python -m nlp_decouple.train`), so peak memory (max RSS on CPU, CUDA max
allocated on GPU) belongs to that run alone. Results: one JSON with every run and a mean ± std summary,
plus the Markdown table that goes into docs/benchmarks.md.

    python benchmarks/methods_accuracy.py --out benchmarks/out/agnews_methods.json \
        --data-path ../shared/datasets/ag_news_7600 --tokenizer sentence-transformers/all-MiniLM-L6-v2 \
        -- train.epochs=3 train.batch_size=64 model.hidden_size=128 model.num_heads=4 model.ffn_size=256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(recipe: Path, overrides: list[str], run_dir: Path, threads: int) -> dict:
    results = run_dir / "results.json"
    if not results.exists():  # resumable: finished runs are kept
        cmd = [sys.executable, "-m", "nlp_decouple.train", str(recipe), *overrides]
        print("$", " ".join(cmd), flush=True)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(results.read_text())


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for key in sorted({(r["encoder"], r["method"]) for r in runs}, key=lambda k: (k[0], METHOD_ORDER.index(k[1]))):
        group = [r for r in runs if (r["encoder"], r["method"]) == key]
        acc = mean_std([100 * r["test_accuracy"] for r in group])
        f1 = mean_std([100 * r["test_macro_f1"] for r in group])
        rows.append({
            "encoder": key[0], "method": key[1], "seeds": [r["seed"] for r in group],
            "test_accuracy_mean": acc[0], "test_accuracy_std": acc[1],
            "test_macro_f1_mean": f1[0], "test_macro_f1_std": f1[1],
            "last_epoch_accuracy_mean": statistics.fmean(100 * r["last_epoch_test_accuracy"] for r in group),
            "time_per_epoch_s": statistics.fmean(r["time_per_epoch_s"] for r in group),
            "train_samples_per_s": statistics.fmean(r["train_samples_per_s"] for r in group),
            "peak_memory_mb": statistics.fmean(r["peak_memory_mb"] for r in group),
            "peak_memory_kind": group[0]["peak_memory_kind"],
            "num_parameters": group[0]["num_parameters"],
            "groups_at_best_epoch": [r["groups_at_best_epoch"] for r in group],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| encoder | method | test acc % (mean ± std) | macro-F1 % | Δ acc vs BP | time/epoch s | samples/s | peak mem MB | params |",
             "|---|---|---|---|---|---|---|---|---|"]
    bp = {r["encoder"]: r["test_accuracy_mean"] for r in rows if r["method"] == "bp"}
    for r in rows:
        delta = r["test_accuracy_mean"] - bp[r["encoder"]] if r["encoder"] in bp else float("nan")
        lines.append(f"| {r['encoder']} | {r['method']} | {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | "
                     f"{r['test_macro_f1_mean']:.2f} ± {r['test_macro_f1_std']:.2f} | {delta:+.2f} | "
                     f"{r['time_per_epoch_s']:.1f} | {r['train_samples_per_s']:.0f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['num_parameters']:,} |")
    return "\n".join(lines)


METHOD_ORDER = ["bp", "scpl", "early_exit", "deinforeg", "al"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="agnews", help="recipe prefix: agnews | dbpedia | imdb")
    parser.add_argument("--data-path", default=None, help="local copy of the dataset (data.path)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.name (default: the recipe's trained vocabulary)")
    parser.add_argument("--encoders", nargs="+", default=["transformer", "lstm"])
    parser.add_argument("--methods", nargs="+", default=["bp", "scpl", "early_exit", "deinforeg"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="benchmarks/out/runs")
    parser.add_argument("--out", default="benchmarks/out/methods_accuracy.json")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cpu_count/jobs threads)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (after --)")
    args = parser.parse_args()
    common = list(args.overrides) + ["train.progress=false"]
    if args.data_path:
        common.append(f"data.path={args.data_path}")
    if args.tokenizer:
        common.append(f"tokenizer.name={args.tokenizer}")
    start = time.time()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = []
    for encoder in args.encoders:
        recipe = REPO / "recipes" / f"{args.dataset}_{encoder}.yaml"
        for method in args.methods:
            for seed in args.seeds:
                name = f"{args.dataset}-{encoder}-{method}-seed{seed}"
                overrides = [*common, f"method.name={method}", f"train.seed={seed}",
                             f"output_dir={args.runs_dir}", f"run_name={name}"]
                jobs.append((recipe, overrides, REPO / args.runs_dir / name, threads))
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on subprocesses
        runs = list(pool.map(lambda job: run_one(*job), jobs))
    rows = summarise(runs)
    report = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "overrides": common,
              "jobs_in_parallel": args.jobs, "threads_per_run": threads,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "device": runs[0]["device"]},
              "wall_time_s": time.time() - start, "summary": rows, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
