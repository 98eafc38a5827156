"""The MiniLM table: the pretrained MiniLM fine-tuned by every method on AG News and debian_packages, 3 seeds,
as many training processes at a time as asked (one GPU holds several of these small runs), within a time
limit. Sized for one GPU and a budget of minutes.

1. SCPL's setting is chosen on validation (tuning seed 100, ``eval.test=false``): plain SupCon on an identity
   projection, or with ``method.supcon_prototypes=true`` and ``method.projection=mlp_bn`` (the protocol's SCPL
   setting for many classes and small batches, where SupCon alone starves: many anchors of a batch of 32 have
   no positive). The first table chose the prototypes on both data sets; the MiniLM recipes now have them.
2. Every method with the recipe's settings on seeds 0, 1, 2 (the test split scored at the best-validation
   epoch, as always); SCPL with the setting chosen in 1, the other methods with ``OTHERS`` (the keys the
   first table ran them with: ``method.projection`` is shared with DeInfoReg's projector). Seeds first, so
   a cut-short run still has every method on the first seeds.

Each run's results.json, metrics.jsonl, config.yaml and test_predictions.json (what ``nlp-decouple report``
reads) go into ``--archive`` after every finished run; checkpoints are deleted to save disk.

    python benchmarks/minilm_table.py --shared ../shared --work /tmp/minilm --archive benchmarks/out/minilm_runs.tar.gz
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nlp_decouple.registry import METHODS
from nlp_decouple.sweeps import train_command

SCPL_SETTINGS = {"plain": ["method.supcon_prototypes=false", "method.projection=identity"],
                 "prototypes": ["method.supcon_prototypes=true", "method.projection=mlp_bn"]}
OTHERS = SCPL_SETTINGS["plain"]  # the first table's non-SCPL runs (the recipe before it took SCPL's choice)
KEEP = ("results.json", "metrics.jsonl", "config.yaml", "test_predictions.json")


def cells(shared: Path) -> dict[str, list[str]]:
    return {
        "agnews": [f"data.path={shared}/datasets/ag_news_7600"],
        "debian": ["data.name=custom", f"data.path={shared}/datasets/debian_packages", "data.max_train_samples=8000"],
    }


@dataclass
class Job:
    name: str  # cell/method/run
    overrides: list[str]
    needs: str | None = None  # a cell whose SCPL choice this job waits for
    proc: subprocess.Popen | None = None
    started: float = 0.0
    log: Path | None = None
    status: str = "queued"
    extra: dict = field(default_factory=dict)


def build_jobs(args) -> list[Job]:
    common = [f"train.epochs={args.epochs}", "train.progress=false", "eval.every_group=false", *args.override]
    jobs = []
    for cell, data in cells(args.shared).items() if "scpl" in args.methods else ():
        for setting, keys in SCPL_SETTINGS.items():
            jobs.append(Job(f"{cell}/select/scpl-{setting}", [*data, *common, "method.name=scpl", "train.seed=100",
                                                            "eval.test=false", *keys], extra={"setting": setting}))
    for seed in args.seeds:
        for cell, data in cells(args.shared).items():
            for method in args.methods:
                jobs.append(Job(f"{cell}/seeds/{method}-seed{seed}",
                                [*data, *common, f"method.name={method}", f"train.seed={seed}",
                                 *([] if method == "scpl" else OTHERS)],
                                needs=cell if method == "scpl" else None))
    return jobs


def command(job: Job, jobs: list[Job], work: Path, recipe: str) -> list[str]:
    """The training command of ``job``; an SCPL seed run gets its cell's chosen setting (call once the
    choice is known: ``chosen_setting`` is not None)."""
    overrides = list(job.overrides)
    if job.needs:
        job.extra["setting"] = chosen_setting(jobs, job.needs, work)
        overrides += SCPL_SETTINGS[job.extra["setting"]]
    run_dir = work / job.name
    return train_command(recipe, [*overrides, f"output_dir={run_dir.parent}", f"run_name={run_dir.name}"])


def selection_scores(jobs: list[Job], cell: str, work: Path) -> dict[str, float] | None:
    """Validation accuracy of each SCPL setting whose selection run finished; None while one still runs."""
    picks = [j for j in jobs if j.name.startswith(f"{cell}/select/")]
    if any(j.status in ("queued", "running") for j in picks):
        return None
    results = {j.extra["setting"]: work / j.name / "results.json" for j in picks}
    return {k: json.loads(res.read_text())["validation_accuracy"] for k, res in results.items() if res.is_file()}


def chosen_setting(jobs: list[Job], cell: str, work: Path) -> str | None:
    """The SCPL setting with the higher validation accuracy, once both selection runs ended ('plain' when
    neither finished)."""
    scores = selection_scores(jobs, cell, work)
    if scores is None:
        return None
    return max(scores, key=scores.get) if scores else "plain"


def archive(work: Path, target: Path) -> None:
    tmp = target.with_suffix(".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.resolve() in (target.resolve(), tmp.resolve()):  # an archive inside the work folder
                continue
            if path.is_file() and (path.name in KEEP or path.suffix == ".log" or path.parent == work):
                tar.add(path, arcname=str(path.relative_to(work)))
    tmp.replace(target)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "agnews_minilm.yaml"))
    p.add_argument("--work", type=Path, required=True, help="run folders go here")
    p.add_argument("--archive", type=Path, required=True)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--parallel", type=int, default=6, help="training processes at a time")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    p.add_argument("--stop-launching", type=float, default=1e9, help="seconds after which no run starts")
    p.add_argument("--kill-at", type=float, default=1e9, help="seconds after which running runs are killed")
    p.add_argument("override", nargs="*", help="key=value for every run (e.g. small sizes for a dry run)")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.shared = args.shared.resolve()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.archive.parent.mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    timeline = []

    def launch(job: Job) -> None:
        cmd = command(job, jobs, work, args.recipe)
        run_dir = work / job.name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        job.log = run_dir.parent / f"{run_dir.name}.log"
        with job.log.open("w") as log:  # the child keeps its own copy of the handle
            job.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        job.started, job.status = time.perf_counter(), "running"
        print(f"[{job.started - start:6.0f}s] start {job.name} {' '.join(cmd[-5:-2])}", flush=True)

    def finish(job: Job, code: int) -> None:
        job.status = "done" if code == 0 else f"failed ({code})"
        run_dir = work / job.name
        for sub in ("best", "last", "checkpoints", "tokenizer"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        took = time.perf_counter() - job.started
        timeline.append({"run": job.name, "status": job.status, "start_s": job.started - start, "wall_s": took,
                         **job.extra})
        tail = job.log.read_text().strip().splitlines()[-1:] if job.log and job.log.is_file() else []
        print(f"[{time.perf_counter() - start:6.0f}s] {job.status} {job.name} {took:.0f}s {' '.join(tail)[:200]}",
              flush=True)
        (work / "timeline.json").write_text(json.dumps(timeline, indent=1))
        archive(work, args.archive)
        cell = job.name.split("/")[0]
        if "/select/" in job.name and (scores := selection_scores(jobs, cell, work)) is not None:
            print(f"{cell}: SCPL seeds run with {chosen_setting(jobs, cell, work)!r} (validation {scores})", flush=True)

    try:
        schedule(jobs, args, work, launch, finish, start)
    finally:  # never leave a training process behind
        for job in jobs:
            if job.status == "running":
                job.proc.kill()
                job.proc.wait()
                finish(job, -9)
    timeline += [{"run": j.name, "status": j.status} for j in jobs if j.status.startswith("not started")]
    (work / "timeline.json").write_text(json.dumps(timeline, indent=1))
    archive(work, args.archive)
    done = sum(j.status == "done" for j in jobs)
    print(f"{done}/{len(jobs)} runs finished in {time.perf_counter() - start:.0f}s; archive {args.archive}")
    return 0 if done == len(jobs) else 1


def schedule(jobs: list[Job], args, work: Path, launch, finish, start: float) -> None:
    """Start queued runs (in order, those whose SCPL choice is known) while fewer than ``--parallel`` run,
    until every run ended or the time limits passed."""
    while True:
        now = time.perf_counter() - start
        running = [j for j in jobs if j.status == "running"]
        for job in running:
            code = job.proc.poll()
            if code is not None:
                finish(job, code)
            elif now > args.kill_at:
                job.proc.kill()
                job.proc.wait()
                finish(job, -9)
        running = [j for j in jobs if j.status == "running"]
        queued = [j for j in jobs if j.status == "queued"]
        if now < args.stop_launching:
            for job in queued:
                if len(running) >= args.parallel:
                    break
                if job.needs and chosen_setting(jobs, job.needs, work) is None:
                    continue
                launch(job)
                running.append(job)
        elif queued:
            for job in queued:
                job.status = "not started (time limit)"
        if not running and not any(j.status == "queued" for j in jobs):
            break
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
