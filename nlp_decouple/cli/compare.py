"""Train every method x seed on identical data, tokenizer, model size and budget, then write a report:

    nlp-decouple compare recipes/agnews_transformer.yaml methods=bp,scpl,early_exit,al,deinforeg \\
        seeds=0,1,2,3,4 train.epochs=5 model.hidden_size=64 [--out runs/compare-agnews] [--jobs 2] [--margin 1.0]

Each run gets its own directory ``OUT/<method>-seed<seed>`` and is a fresh ``python -m nlp_decouple.train``
process (so its peak memory is its own). The sweep is resumable: a finished run with the same settings is
kept, an interrupted one continues from its last checkpoint (``train.resume=auto``), and a run directory
holding different settings, or made by other code or on other data, is refused (``--reuse-other-versions``
reuses the latter anyway). Each run also gets ``source_recipe.json``: the recipe it came from and, for a
recipe written by ``tune``, its provenance (the report says when a verdict is about untuned settings). The
report goes to ``OUT/report`` (see ``nlp_decouple.report``).

Under ``accelerate launch`` / ``torchrun`` with several processes, the runs train in this process group
one after another (data parallel), and rank 0 writes the report. ``--launcher "accelerate launch
--num_processes 2"`` instead starts each run under that launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import config_from_dict, load_config, run_identity
from ..errors import UserError, cli_entry
from ..extras import require_report
from ..logs import setup_console
from ..registry import METHODS
from ..report_data import SOURCE_FILE
from ..reuse import OVERRIDE, check_reuse
from ..stats import DEFAULT_MARGIN

DEFAULT_SEEDS = [0, 1, 2, 3, 4]  # five: the paired t test's interval is usable, with three it is very wide


@dataclass
class PlannedRun:
    method: str
    seed: int
    overrides: list[str]
    run_dir: Path
    state: str  # "done" | "resume" | "new"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlp-decouple compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe shared by every run")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="methods=a,b,... seeds=0,1,... and any recipe override, applied to every run")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep directory (default: <output_dir>/compare-<recipe name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each with cpu_count/jobs threads")
    parser.add_argument(OVERRIDE, action="store_true",
                        help="keep finished or interrupted runs made by other code or on other data")
    parser.add_argument("--launcher", default=None, help='prefix for each run, e.g. "accelerate launch --num_processes 2"')
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--resamples", type=int, default=2000, help="the report's paired bootstrap resamples (default 2000)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="the report's equivalence margin in accuracy points (default %(default)g)")
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if not args.margin > 0:
        raise UserError(f"--margin {args.margin:g}: give the equivalence margin in accuracy points, > 0 (e.g. 1.0)")
    return args


def split_sweep(overrides: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Pull ``methods=`` and ``seeds=`` out of the overrides."""
    methods, seeds, rest = ["bp", "scpl"], list(DEFAULT_SEEDS), []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "methods":
            methods = [m.strip() for m in value.split(",") if m.strip()]
            unknown = [m for m in methods if m not in METHODS]
            if unknown or not methods:
                raise UserError(f"methods={value!r}: unknown {unknown or 'none given'}; choose from "
                                f"{','.join(METHODS)}")
        elif key == "seeds":
            try:
                seeds = [int(s) for s in value.split(",") if s.strip()]
            except ValueError:
                raise UserError(f"seeds={value!r}: give integers separated by commas, e.g. seeds=0,1,2,3,4") from None
            if not seeds:
                raise UserError("seeds= is empty; e.g. seeds=0,1,2,3,4")
        elif key in ("method.name", "train.seed", "run_name", "output_dir", "train.resume"):
            raise UserError(f"{key} is set by compare for each run: use methods=..., seeds=... or --out instead")
        else:
            rest.append(item)
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise UserError("methods= and seeds= must not repeat a value")
    return methods, seeds, rest


def plan(recipe: str, methods: list[str], seeds: list[int], common: list[str], out: Path,
         other_versions: bool = False) -> list[PlannedRun]:
    """Validate every run's config before training any, and find what is already done."""
    runs = []
    for method in methods:
        for seed in seeds:
            name = f"{method}-seed{seed}"
            overrides = [*common, f"method.name={method}", f"train.seed={seed}", f"output_dir={out}", f"run_name={name}"]
            cfg = load_config(recipe, overrides)
            run_dir = out / name
            state = "new"
            if (run_dir / "config.yaml").is_file():
                try:  # through the config, so a key added since that run takes its default
                    same = run_identity(config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))) \
                        == run_identity(cfg)
                except UserError:  # a key it had is gone, or a value no longer valid
                    same = False
                if not same:
                    raise UserError(f"{run_dir} holds a run with other settings: give another --out, or delete it")
                if (run_dir / "results.json").is_file():
                    state = "done"
                elif (run_dir / "checkpoints").is_dir():
                    state = "resume"
                    overrides += ["train.resume_other_versions=true"] if other_versions else []
                check_reuse(run_dir, cfg, other_versions)
            runs.append(PlannedRun(method, seed, overrides, run_dir, state))
    return runs


def run_subprocess(recipe: str, run: PlannedRun, launcher: str | None, threads: int | None) -> None:
    cmd = [*(shlex.split(launcher) if launcher else [sys.executable]), "-m", "nlp_decouple.train", recipe,
           *run.overrides, "train.progress=false", *(["train.resume=auto"] if run.state == "resume" else [])]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"[compare] {run.run_dir.name}: {'resuming' if run.state == 'resume' else 'training'}", flush=True)
    log_path = run.run_dir / "train.log"
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"run {run.run_dir.name} failed (exit {proc.returncode}): {tail[0][:300]}; full log: {log_path}")


def run_in_process(run: PlannedRun, recipe: str) -> None:
    """Data parallel under an outer launcher: every rank trains the same run together."""
    from ..trainer import Trainer

    overrides = [*run.overrides, "train.progress=false", *(["train.resume=auto"] if run.state == "resume" else [])]
    Trainer(load_config(recipe, overrides)).fit()  # the process group stays up for the next run


def refuse_tuning_seeds(recipe: str, seeds: list[int]) -> None:
    """A recipe written by ``tune`` must be reported on seeds it was not tuned on."""
    from ..tuning.recipe import read_provenance

    provenance = read_provenance(recipe) or {}
    reused = sorted(set(seeds) & set(provenance.get("tuning_seeds", [])))
    if reused:
        raise UserError(f"seeds {reused} tuned {recipe!r}: report on other seeds (e.g. seeds=0,1,2,3,4), never the "
                        "tuning ones")


def record_source(recipe: str, common: list[str], runs: list[PlannedRun]) -> None:
    """Write each run's ``source_recipe.json`` before it trains: the recipe, the sweep's overrides and the
    recipe's tune provenance (null for a recipe not written by ``tune``); the report reads it."""
    from ..tuning.recipe import read_provenance

    source = {"recipe": str(Path(recipe).resolve()), "overrides": common, "tune_provenance": read_provenance(recipe)}
    for run in runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_report("nlp-decouple compare (its report)")  # before any run trains
    methods, seeds, common = split_sweep(args.overrides)
    base = load_config(args.recipe, common)  # a bad override fails here, before anything trains
    refuse_tuning_seeds(args.recipe, seeds)
    out = args.out or Path(base.output_dir) / f"compare-{Path(args.recipe).stem}"
    runs = plan(args.recipe, methods, seeds, common, out, args.reuse_other_versions)
    todo = [r for r in runs if r.state != "done"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        print(f"[compare] {len(runs)} runs in {out}: {len(runs) - len(todo)} done, {len(todo)} to train", flush=True)
        record_source(args.recipe, common, todo)
    if world > 1:
        if args.launcher or args.jobs > 1:
            raise UserError("under a multi-process launcher the runs train in this process group: drop --launcher/--jobs")
        setup_console()
        for run in todo:
            run_in_process(run, args.recipe)
        from ..trainer import end_process_group

        end_process_group()
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        with ThreadPoolExecutor(args.jobs) as pool:  # the threads only wait on subprocesses
            list(pool.map(lambda r: run_subprocess(args.recipe, r, args.launcher, threads), todo))
    if rank0:
        from ..report import build_report

        title = args.title or f"{Path(args.recipe).stem}: {', '.join(methods)} x seeds {','.join(map(str, seeds))}"
        build_report([r.run_dir for r in runs], out / "report", title, args.resamples, margin=args.margin)
        print((out / "report" / "report.md").read_text())
        print(f"[compare] report: {out / 'report' / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
