"""Atomic, resumable checkpoints built on ``Accelerator.save_state``.

A checkpoint is written into a hidden temporary directory and renamed into place only when complete, so
a run killed mid-write never leaves a checkpoint that a resume could pick up.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from .errors import UserError
from .provenance import stale_reason

log = logging.getLogger("nlp_decouple")
STATE_FILE = "trainer_state.json"
PREFIX = "step_"


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary directories and stray files are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict, keep: int) -> Path:
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))  # written last: marks the checkpoint complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_point(resume: str, root: Path) -> Path | None:
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise UserError(f"train.resume {resume!r} is not a complete checkpoint (no {STATE_FILE}); "
                        f"use train.resume=auto or one of {[str(p) for p in complete_checkpoints(root)]}")
    return path


class CheckpointMismatch(UserError):
    """A checkpoint that this run may not continue: made by other code, on other data, with another config,
    or for another model."""


def load_checkpoint(accelerator: Accelerator, path: Path, identity: dict, other_versions: bool = False) -> dict:
    """Load the checkpoint into the prepared objects and return its trainer state; refuse one made with
    another identity (see ``trainer.checkpoint_identity``), naming the first differences, or by other code
    or on other data (unless ``other_versions``)."""
    state = json.loads((path / STATE_FILE).read_text())
    saved, identity = dict(state.pop("identity", {})), dict(identity)
    versions = {k: saved.pop(k, None) for k in ("code", "data")}
    stale = stale_reason(versions, {k: identity.pop(k) for k in ("code", "data")})
    if stale and not other_versions:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} was made {stale}: start afresh with a new run_name, or resume "
                        "it anyway with train.resume_other_versions=true")
    diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in diff[:3])
        raise CheckpointMismatch(f"checkpoint {str(path)!r} was made with a different config ({shown}); resume with the same "
                        "settings, or give a new output_dir/run_name to start afresh")
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} does not fit this model ({str(err).splitlines()[0][:160]}); "
                        "start afresh with a new run_name") from None
    return state


def resume_point(accelerator: Accelerator, root: Path, resume: str | None, identity: dict,
                 other_versions: bool = False) -> dict | None:
    """The trainer state to continue from (its weights and optimizer states loaded), or None to start
    afresh. ``resume`` None: a fresh run, whose stale checkpoints are removed (a later ``auto`` would pick
    them up); ``"auto"``: the newest complete checkpoint, if any; else a checkpoint path."""
    if resume is None:
        if accelerator.is_main_process and complete_checkpoints(root):
            log.warning("starting afresh: removing the earlier checkpoints in %s (train.resume=auto continues "
                        "a run instead)", root)
            shutil.rmtree(root)
        accelerator.wait_for_everyone()
        return None
    path = find_resume_point(resume, root)
    if path is None:
        log.info("train.resume=auto: no checkpoint yet, starting afresh")
        return None
    state = load_checkpoint(accelerator, path, identity, other_versions)
    log.info("resumed from %s (epoch %d, %d batches into it)", path, state["epoch"], state["batches_done"])
    return state
