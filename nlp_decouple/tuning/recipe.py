"""A tuned recipe: a study's best settings as a recipe YAML, with its provenance in the opening comments.

Written only from the SQLite study, the one source: the study keeps the resolved config it tuned from,
the space, the tuning seeds and the budget, and the recipe is that config with the best trial's values.
Writing it again from the same study gives the same file.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path


from ..config import dump_yaml, load_config
from ..errors import UserError

PROVENANCE_TAG = "# tune-provenance: "  # one JSON line, for tools (compare can refuse the tuning seeds)
OBJECTIVE = "validation accuracy at the best epoch (mean over the tuning seeds); test never computed"


def provenance(study, out: Path) -> dict | None:
    """What the recipe says about where it comes from; None while the study has no complete trial."""
    from optuna.trial import TrialState

    from .study import storage_url

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if not count[TrialState.COMPLETE]:
        return None
    best, settings = study.best_trial, study.user_attrs["settings"]
    dates = sorted(t.datetime_complete for t in trials if t.datetime_complete)
    return {
        "study": study.study_name, "storage": storage_url(out), "sweep": str(out),
        "recipe": settings["recipe"],
        "budget": study.user_attrs.get("trials"),
        "finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED], "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED], "failed": count[TrialState.FAIL],
        "best_trial": best.number, "best_value": best.value, "objective": OBJECTIVE,
        "tuning_seeds": settings["seeds"], "params": best.params, "space": settings["space"],
        "code": settings.get("code"),
        "dates": [dates[0].isoformat(timespec="seconds"), dates[-1].isoformat(timespec="seconds")],
    }


def _header(p: dict) -> str:
    tuned = ", ".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in p["params"].items())
    lines = [
        f"Tuned recipe for {p['study']}, written by `nlp-decouple tune` from its Optuna study: regenerate it with",
        f"`nlp-decouple tune {p['recipe']} methods={p['study']} --export --out {p['sweep']}` rather than edit it.",
        f"study: {p['study']} in {p['storage']}",
        f"budget: {p['budget']} finished trials; finished {p['finished']} ({p['complete']} complete, "
        f"{p['pruned']} pruned), {p['failed']} failed",
        f"best: trial {p['best_trial']}, {p['best_value']:.4f} = {p['objective']}",
        f"tuned: {tuned}",
        "space: " + ", ".join(f"{k}={v}" for k, v in p["space"].items()),
        f"tuning seeds: {','.join(map(str, p['tuning_seeds']))} (report on other seeds)",
        f"trials finished between {p['dates'][0]} and {p['dates'][1]}",
    ]
    return "".join(f"# {line}\n" for line in lines) + PROVENANCE_TAG + json.dumps(p) + "\n"


def write_recipe(study, out: Path) -> dict | None:
    """Write ``OUT/<study name>.yaml`` from the study (atomically) and check that it loads; None (nothing
    written) while the study has no complete trial."""
    p = provenance(study, out)
    if p is None:
        return None
    config = copy.deepcopy(study.user_attrs["settings"]["base"])
    for key, value in p["params"].items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    path = out / f"{study.study_name}.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(_header(p) + dump_yaml(config))
    try:
        load_config(tmp)
    except UserError as err:
        raise UserError(f"the tuned recipe for {study.study_name} does not load ({err}); it is left in {tmp}") from None
    os.replace(tmp, path)
    return p


def read_provenance(path: str | Path) -> dict | None:
    """The provenance of a recipe written by ``tune`` (None for any other recipe)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(PROVENANCE_TAG):
            return json.loads(line[len(PROVENANCE_TAG):])
        if not line.startswith("#"):
            return None
    return None
