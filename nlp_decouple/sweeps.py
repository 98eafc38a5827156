"""Sweeps over methods and seeds: the ``methods=`` / ``seeds=`` lists of ``compare`` and ``tune``, and the one
way a sweep starts a training run (a fresh ``nlp_decouple.train`` process, so its peak memory is its own).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import UserError, did_you_mean
from .registry import METHODS


def parse_methods(value: str) -> list[str]:
    """``methods=a,b,...``: distinct names from the method registry, in the order given."""
    names = [m.strip() for m in value.split(",") if m.strip()]
    choices = f"give distinct names from {','.join(METHODS)}"
    if not names:
        raise UserError(f"methods={value!r}: unknown (none given); {choices}")
    for name in names:
        if name not in METHODS:
            raise UserError(f"methods={value!r}: unknown method {name!r}{did_you_mean(name, list(METHODS))}; {choices}")
    repeated = [m for m, n in Counter(names).items() if n > 1]
    if repeated:
        raise UserError(f"methods={value!r}: {repeated[0]!r} repeats; {choices}")
    return names


def parse_seeds(value: str, example: str = "0,1,2,3,4") -> list[int]:
    """``seeds=0,1,...``: distinct integers, in the order given; ``example`` goes into the error line."""
    fix = f"give distinct integers separated by commas, e.g. seeds={example}"
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"seeds={value!r}: {fix}") from None
    if not seeds:
        raise UserError(f"seeds={value!r}: none given; {fix}")
    repeated = [s for s, n in Counter(seeds).items() if n > 1]
    if repeated:
        raise UserError(f"seeds={value!r}: {repeated[0]} repeats; {fix}")
    return seeds


def train_command(recipe: str | Path, overrides: Sequence[str], launcher: str | None = None) -> list[str]:
    """``python -m nlp_decouple.train RECIPE OVERRIDES...`` with this interpreter, or with ``launcher`` (e.g.
    ``"accelerate launch --num_processes 2"``) in place of ``python``."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    return [*prefix, "-m", "nlp_decouple.train", str(recipe), *overrides]


def run_training(recipe: str | Path, overrides: Sequence[str], log: Path, *, launcher: str | None = None,
                 threads: int | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Train one run in a fresh process, its stdout and stderr appended to ``log``; returns its exit code.

    The child gets this process's environment with ``TOKENIZERS_PARALLELISM=false`` (no fork warnings from a
    process that starts others), then ``env``, then ``OMP_NUM_THREADS=threads`` when given."""
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if threads:
        child_env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.run(train_command(recipe, overrides, launcher), cwd=cwd, env=child_env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    return proc.returncode
