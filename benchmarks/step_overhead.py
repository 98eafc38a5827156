"""Sequential SCPL against BP, samples/s of the trainer's own loop, for one or more versions of the code.

Each cell (``--cells``: ``debian_transformer``, ``debian_lstm``, ``agnews_transformer``, ``agnews_lstm``,
``minilm``) is set up as the protocol's (see :func:`cell_overrides`). Every version
(``--code NAME=DIR``: a checkout of the package, e.g. an export of an earlier commit beside this one) runs
in its own child process, which builds one trainer per method once; the parent then asks the children
for ``--rounds`` interleaved rounds (each round: every version, every method, in an order that alternates
from round to round), each a measurement of ``--steps`` optimizer steps through ``Trainer._train_epoch``
(batches, the engine's step, the trainer's recording: what a run spends per step). Medians of the rounds
are reported, with each round's numbers, the machine's load average before and after, and the top
entries of a cProfile of one extra measurement per version and method. Results go to ``--out`` (JSON).

    python benchmarks/step_overhead.py --code after=. --code before=/tmp/before --cells debian_lstm \
        --rounds 3 --steps 8 --out benchmarks/out/step_overhead.json
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("bp", "scpl")


CELLS = ("debian_transformer", "debian_lstm", "agnews_transformer", "agnews_lstm", "minilm")


def cell_overrides(cell: str, shared: Path, minilm_batch: int) -> tuple[str | None, list[str]]:
    """The recipe and overrides of a cell: the protocol's four cells exactly as benchmarks/protocol.sh sets
    them up (d = 64, embedding + 3 blocks = 4 groups, batch 128, the recipes' method settings), on 2,000
    training texts (the step does not depend on how many there are); ``minilm``: the pretrained MiniLM in its
    recipe's 3 groups on debian, batch ``--minilm-batch``."""
    dataset, _, encoder = cell.partition("_")
    small = ["data.max_train_samples=2000", "data.max_eval_samples=100", "train.progress=false"]
    debian = ["data.name=custom", f"data.path={shared / 'datasets' / 'debian_packages'}", "data.max_length=64"]
    if cell == "minilm":
        return str(REPO / "recipes" / "agnews_minilm.yaml"), [*debian, *small, f"train.batch_size={minilm_batch}"]
    if cell not in CELLS:
        raise SystemExit(f"unknown cell {cell}: {' | '.join(CELLS)}")
    data = ([*debian, "tokenizer.name=sentence-transformers/all-MiniLM-L6-v2"] if dataset == "debian"
            else [f"data.path={shared / 'datasets' / 'ag_news_7600'}"])
    model = ["model.num_heads=4", "model.ffn_size=128"] if encoder == "transformer" else []
    return str(REPO / "recipes" / f"agnews_{encoder}.yaml"), [
        *data, *small, "train.batch_size=128", "model.hidden_size=64", *model]


# ---- the child: one version of the code, one trainer per method, measurements on request ----

def child(cell: str, shared: str, minilm_batch: int, out_dir: str) -> None:
    import cProfile
    import io
    import pstats

    import torch

    from nlp_decouple.config import load_config
    from nlp_decouple.signals import StopSignal
    from nlp_decouple.state import TrainState
    from nlp_decouple.trainer import Trainer

    torch.set_num_threads(1)
    recipe, overrides = cell_overrides(cell, Path(shared), minilm_batch)
    trainers = {m: Trainer(load_config(recipe, [*overrides, f"method.name={m}", f"output_dir={out_dir}",
                                                 f"run_name={cell}-{m}"])) for m in METHODS}

    def measure(method: str, steps: int) -> float:
        trainer = trainers[method]
        trainer.cfg.train.max_steps = steps
        state = TrainState()
        with StopSignal() as stop:
            seconds = trainer._train_epoch(state, stop)
        return state.samples / seconds

    for method in METHODS:  # warm-up: allocator, optimizer state, first-call costs
        measure(method, 2)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["what"] == "measure":
            print(json.dumps({"samples_per_s": measure(ask["method"], ask["steps"])}), flush=True)
        elif ask["what"] == "profile":
            profile = cProfile.Profile()
            profile.enable()
            rate = measure(ask["method"], ask["steps"])
            profile.disable()
            stats = pstats.Stats(profile, stream=io.StringIO())
            total = stats.total_tt
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: ask["top"]]
            top = [{"function": f"{Path(f).name}:{line_no}({name})" if f != "~" else name,
                    "calls": calls, "self_s": round(tt, 4), "share": round(tt / total, 4)}
                   for (f, line_no, name), (_, calls, tt, _, _) in rows]
            print(json.dumps({"samples_per_s": rate, "seconds": total, "top": top}), flush=True)
        else:
            return


# ---- the parent ----

class Child:
    def __init__(self, name: str, code: Path, cell: str, args, env: dict):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", cell, "--shared", str(args.shared), "--minilm-batch",
             str(args.minilm_batch), "--runs", str(args.runs / name)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(code),
            env={**env, "PYTHONPATH": str(code)})

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.name}: the child ended (exit {self.proc.wait()})")

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"what": "end"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait()


def run_cell(cell: str, codes: dict[str, Path], args, env: dict) -> dict:
    started = time.perf_counter()
    children = {}
    for name, code in codes.items():  # one at a time: no version builds while another one measures
        children[name] = Child(name, code, cell, args, env)
        children[name].read()
    order = [(v, m) for v in codes for m in METHODS]
    rounds = []
    for r in range(args.rounds):
        row = {}
        for version, method in (order if r % 2 == 0 else order[::-1]):
            row[f"{version}/{method}"] = children[version].ask(what="measure", method=method, steps=args.steps)[
                "samples_per_s"]
        rounds.append(row)
        print(f"{cell} round {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), file=sys.stderr, flush=True)
    profiles = {f"{v}/{m}": children[v].ask(what="profile", method=m, steps=args.steps, top=args.top)
                for v, m in order} if args.top else {}
    for c in children.values():
        c.close()
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio_rounds = {v: [r[f"{v}/scpl"] / r[f"{v}/bp"] for r in rounds] for v in codes}
    return {"rounds": rounds, "median_samples_per_s": median,
            "scpl_over_bp": {v: {"median": statistics.median(x), "rounds": x} for v, x in ratio_rounds.items()},
            "profiles": profiles, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                   help="a version of the package to measure (default: this checkout, as 'current')")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per measurement")
    p.add_argument("--top", type=int, default=8, help="cProfile entries kept per version and method (0: none)")
    p.add_argument("--minilm-batch", type=int, default=32)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared")))
    p.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "out" / "step_overhead_runs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "step_overhead.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, str(args.shared), args.minilm_batch, str(args.runs))
        return 0
    codes = {}
    for spec in args.code or [f"current={REPO}"]:
        name, _, folder = spec.partition("=")
        codes[name] = Path(folder).resolve()
    args.shared, args.runs = args.shared.resolve(), args.runs.resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE", str(args.shared / "hf-cache"))}
    load_before = os.getloadavg()
    cells = {cell: run_cell(cell, codes, args, env) for cell in args.cells}
    report = {"benchmark": "step_overhead", "settings": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items() if k != "child"},
              "codes": {k: str(v) for k, v in codes.items()}, "cells": cells,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": 1,
                          "load_average_before": load_before, "load_average_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for cell, got in cells.items():
        print(cell, {v: round(r["median"], 3) for v, r in got["scpl_over_bp"].items()},
              {k: round(v, 1) for k, v in got["median_samples_per_s"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
