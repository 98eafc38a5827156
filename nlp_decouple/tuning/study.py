"""Optuna studies for ``tune``: one per method in ``OUT/study.db`` (SQLite), trials run in this process.

Resuming after a kill: a tune holds an exclusive lock on ``OUT/tune.lock`` while it runs (the kernel drops
it when the process dies, even on SIGKILL), so a trial found RUNNING by a tune that got the lock was left
by a dead process. It is marked failed and its values queued again (the role of Optuna's heartbeat and
RetryFailedTrialCallback, but without waiting out a grace period); the queued trial continues the cut-short
runs from their newest checkpoints (the trainer's exact resume), so a kill costs at most the epoch under
way. Then the study runs until ``trials`` trials have finished (complete or pruned).
"""
from __future__ import annotations

import fcntl
import gc
import json
import logging
import math
import os
import shutil
import signal
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import load_config
from ..errors import UserError
from .space import Dim, format_value

log = logging.getLogger("nlp_decouple.tune")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRIES = 2  # a trial whose process keeps dying (e.g. out of memory) is not queued forever


@dataclass
class MethodStudy:
    """What one method's trials need: the recipe and fixed overrides, the space, seeds and where to write."""

    method: str
    recipe: str
    common: list[str]  # key=value overrides shared by every method, method.name included
    space: dict[str, Dim]
    seeds: list[int]
    out: Path

    def overrides(self, params: dict, number: int, seed: int) -> list[str]:
        """A trial's config: the shared settings, its sampled values, and what tuning always sets."""
        return [*self.common, *(f"{k}={format_value(v)}" for k, v in params.items()), f"train.seed={seed}",
                "eval.test=false", "train.progress=false", f"output_dir={self.out / self.method}",
                f"run_name=trial{number:03d}-seed{seed}"]


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


@contextmanager
def sweep_lock(out: Path):
    """One tune at a time per sweep folder; held until the process ends or the block exits."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tune.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UserError(f"another tune (pid {handle.read().strip() or '?'}) is running on {out}: wait for it, "
                            "or give another --out") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def open_study(out: Path, name: str, create: bool = True) -> optuna.Study:
    """The study named ``name`` in ``OUT/study.db`` (maximising); ``create=False``: it must exist."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(out), engine_kwargs={"connect_args": {"timeout": 60}})
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"{out / 'study.db'} has no study {name!r}: run tune for it first") from None


RUN_DIR = "run_dir_seed"  # a trial's user attribute per tuning seed: RUN_DIR + seed -> its run folder


def retry(study: optuna.Study, trial, retries: int) -> None:
    """Queue ``trial``'s values again, the new trial to continue its runs (``resume_runs``: seed -> folder)."""
    runs = {key[len(RUN_DIR):]: value for key, value in trial.user_attrs.items() if key.startswith(RUN_DIR)}
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.user_attrs.get("retry_of", trial.number),
                                                  "retries": retries, "resume_runs": runs})


def retry_orphans(study: optuna.Study) -> list[int]:
    """Fail the trials a killed tune left RUNNING and queue their values again; call with the lock held."""
    storage, retried = study._storage, []  # Optuna's public API cannot fail a trial of another process
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "failed_because", "its tune process died")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retries = trial.user_attrs.get("retries", 0)
        if retries < MAX_RETRIES:
            retry(study, trial, retries + 1)
            retried.append(trial.number)
    return retried


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def sampler_seed(method: str, tuning_seed: int, trials_so_far: int) -> int:
    """The TPE sampler's seed for a method's next trial: its own stream per method (CRC-32 of the name, the
    same on every machine), per tuning seed, and moved on by the trials so far, so a resumed study does not
    draw its first trials' values again."""
    return (zlib.crc32(method.encode()) + tuning_seed * 7919 + trials_so_far) % 2**32


def run_study(spec: MethodStudy, study: optuna.Study, trials: int, warmup_epochs: int, pruner=None) -> None:
    """Run trials until ``trials`` have finished: the first half (at most 10) drawn at random, the rest by
    TPE from the finished ones."""
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs + 1)
    while finished(study) < trials:
        study.sampler = optuna.samplers.TPESampler(
            seed=sampler_seed(spec.method, spec.seeds[0], len(study.trials)),
            n_startup_trials=max(1, min(10, trials // 2)))
        study.pruner = pruner
        study.optimize(lambda trial: objective(spec, trial), n_trials=1)


def objective(spec: MethodStudy, trial: optuna.Trial) -> float:
    """Mean over the tuning seeds of the best epoch's validation accuracy. Validation accuracy is reported
    after every epoch (step ``seed index x epochs + epoch``) so that the pruner can stop a poor trial."""
    from ..trainer import NonFiniteLoss

    params = {key: dim.suggest(trial) for key, dim in spec.space.items()}
    configs = []
    for seed in spec.seeds:
        try:
            configs.append(load_config(spec.recipe, spec.overrides(params, trial.number, seed)))
        except UserError as err:
            raise UserError(f"{spec.method} trial {trial.number} drew settings that are not valid together "
                            f"({err}); narrow the space") from None
    resume_runs = trial.user_attrs.get("resume_runs", {})
    scores, epochs = [], configs[0].train.epochs
    for index, cfg in enumerate(configs):
        cut_short = resume_runs.get(str(cfg.train.seed))
        if take_over(Path(cut_short) if cut_short else None, cfg.run_dir()):
            cfg = load_config(spec.recipe, [*spec.overrides(params, trial.number, cfg.train.seed), "train.resume=auto"])
        trial.set_user_attr(f"{RUN_DIR}{cfg.train.seed}", str(cfg.run_dir()))
        reported: list[int] = []  # the epochs reported to the pruner

        def record(row: dict, offset: int = index * epochs) -> None:
            accuracy = row["validation"]["accuracy"]
            reported.append(row["epoch"])
            trial.report(accuracy, offset + row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {accuracy:.4f} at epoch {row['epoch']}")

        def report(row: dict, run_dir: Path = cfg.run_dir()) -> None:
            if not reported:  # a resumed run reports from after its checkpoint: the epochs before it come first
                for earlier in epoch_rows(run_dir):
                    if earlier["epoch"] < row["epoch"]:
                        record(earlier)
            record(row)

        interrupted = False
        try:
            run_seed(cfg, report)
        except NonFiniteLoss as err:  # diverged: these settings lose, like a pruned trial
            trial.set_user_attr("stopped", str(err).split(";")[0])
            raise optuna.TrialPruned("non-finite loss") from None
        except UserError as err:
            # the trainer's answer to SIGINT/SIGTERM (a UserError "stopped by ..."): not the settings' fault, so
            # the next tune runs them again, from this run's checkpoint
            if not str(err).startswith("stopped by"):
                raise UserError(f"{spec.method} trial {trial.number}: {err}") from None
            interrupted = True
            retry(trial.study, trial, 0)
            raise UserError(f"{str(err).split(';')[0]} during {spec.method} trial {trial.number}: rerun the same "
                            "tune command to go on (finished trials are kept, this one continues)") from None
        finally:  # a finished trial's model is not what tuning delivers: keep only best/
            if not interrupted:
                for tag in ("checkpoints", "last"):
                    shutil.rmtree(cfg.run_dir() / tag, ignore_errors=True)
        # every epoch of the run, those before a resume too (also a run resumed at its end, which reports none)
        scores.append(max((row["validation"]["accuracy"] for row in epoch_rows(cfg.run_dir())), default=float("nan")))
    return sum(scores) / len(scores) if all(map(math.isfinite, scores)) else float("nan")


def take_over(cut_short: Path | None, run_dir: Path) -> bool:
    """Move a cut-short run with checkpoints to ``run_dir`` (True: the run continues there); else clear
    ``run_dir`` of what an earlier study left (trial numbers restart with a new study) and start afresh."""
    if cut_short is not None and (cut_short / "checkpoints").is_dir():
        if cut_short.resolve() != run_dir.resolve():
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            cut_short.rename(run_dir)
        log.info("continuing the cut-short run in %s from its newest checkpoint", run_dir)
        return True
    shutil.rmtree(run_dir, ignore_errors=True)
    return False


def run_seed(cfg, on_epoch) -> None:
    """One seed's run; a cut-short run whose checkpoint this code may not continue starts afresh."""
    from ..checkpoint import CheckpointMismatch

    try:
        train_one(cfg, on_epoch)
    except CheckpointMismatch as err:
        log.warning("%s; starting this run afresh", str(err).split(":")[0])
        shutil.rmtree(cfg.run_dir())
        train_one(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": None})}), on_epoch)


def epoch_rows(run_dir: Path) -> list[dict]:
    """The run's per-epoch rows so far (its metrics.jsonl; none before its first epoch)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def train_one(cfg, on_epoch) -> None:
    """One in-process run; afterwards the signal handlers are as before it, also when ``on_epoch`` stopped
    it. Accelerate's process-wide state is kept: every trial launches alike (one process, the recipe's
    precision and device), so the next trial's Accelerator reuses it."""
    from ..trainer import Trainer

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        Trainer(cfg).fit(on_epoch=on_epoch)
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
        gc.collect()
