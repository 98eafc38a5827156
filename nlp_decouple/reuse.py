"""Whether a finished or interrupted run folder may stand in for a run asked for now: besides its settings
(``config.run_identity``), it must have been made by this code on this data (``nlp_decouple.provenance``)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import yaml

from .config import Config, DataConfig
from .errors import UserError
from .provenance import code_version, data_fingerprint, stale_reason

OVERRIDE = "--reuse-other-versions"


def recorded_versions(run_dir: Path) -> dict | None:
    """``{"code", "data"}`` as recorded by the run's results.json, else by its newest complete checkpoint;
    None when it has neither (nothing to reuse). Missing keys (older runs) read as None."""
    results = run_dir / "results.json"
    if results.is_file():
        saved = json.loads(results.read_text())
        return {"code": (saved.get("code_version") or {}).get("id"), "data": saved.get("data_fingerprint")}
    from .checkpoint import STATE_FILE, complete_checkpoints

    found = complete_checkpoints(run_dir / "checkpoints")
    if not found:
        return None
    identity = json.loads((found[-1] / STATE_FILE).read_text()).get("identity", {})
    return {"code": identity.get("code"), "data": identity.get("data")}


@lru_cache(maxsize=64)
def _fingerprint(data_yaml: str, seed: int, with_test: bool) -> str:
    from .data import load_text_data

    data = load_text_data(DataConfig(**yaml.safe_load(data_yaml)), seed, with_test=with_test)
    return data_fingerprint(data.splits, data.label_names)


def current_fingerprint(cfg: Config) -> str:
    """The fingerprint the run of ``cfg`` would record: its data loaded as the trainer loads it (the training
    split in content order, the test split only when the run scores it, ``eval.test``)."""
    return _fingerprint(yaml.safe_dump(cfg.data.model_dump(), sort_keys=True), cfg.train.seed, cfg.eval.test)


def check_reuse(run_dir: Path, cfg: Config, other_versions: bool = False) -> None:
    """Refuse (one line naming why and the fix) to reuse ``run_dir`` for ``cfg`` when it was made by other
    code or on other data, unless ``other_versions``. The data is loaded only when the code matches."""
    recorded = recorded_versions(run_dir)
    if other_versions or recorded is None:
        return
    current = {"code": code_version()["id"], "data": None}
    reason = stale_reason(recorded, current) or stale_reason(recorded, {**current, "data": current_fingerprint(cfg)})
    if reason:
        raise UserError(f"{run_dir} was made {reason}: give another --out or delete it to train afresh, or reuse "
                        f"it anyway with {OVERRIDE}")
