"""Tune each method's settings on validation accuracy with Optuna, the same trial budget for every method:

    nlp-decouple tune recipes/agnews_transformer.yaml methods=bp,scpl trials=30 [seeds=100] \\
        [space.train.lr=log:1e-4:1e-2 space.scpl.method.temperature=off ...] [key=value ...] [--out DIR]

One study per method (TPE sampler, median pruner on per-epoch validation accuracy) in ``OUT/study.db``
(SQLite; browse it with ``optuna-dashboard sqlite:///OUT/study.db``), default
``OUT = <output_dir>/tune-<recipe name>``. Every trial trains in this process with ``eval.test=false``
(the test split is never loaded) in ``OUT/<method>/trial<N>-seed<S>/``. The objective is the best epoch's
validation accuracy, averaged over the tuning seeds (default 100; compare's default reporting seeds 0-4 are
refused). Rerun the same command after a kill: trials the dead process left running run again, and each
study goes on until ``trials`` trials have finished (complete or pruned); a larger ``trials=`` extends it.

After each method, ``OUT/<method>.yaml`` is written from its study: the best trial's values in a recipe
for ``train``/``compare``, with its provenance in the opening comments. ``--export`` only rewrites these.

Search space (``space.KEY=...`` for every method, ``space.METHOD.KEY=...`` for one; defaults per method
in nlp_decouple/tuning/space.py):
    log:LOW:HIGH | float:LOW:HIGH[:log] | int:LOW:HIGH[:log] | choice:A,B,... | off
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..config import load_config, run_identity
from ..errors import UserError, cli_entry
from ..extras import require
from ..logs import setup_console
from ..provenance import code_version
from ..registry import METHODS
from ..reuse import OVERRIDE
from ..tuning.space import build_spaces, format_value
from .compare import DEFAULT_SEEDS

log = logging.getLogger("nlp_decouple.tune")
REPORT_SEEDS = set(DEFAULT_SEEDS)  # compare's default seeds: kept unseen by tuning
SET_BY_TUNE = ("method.name", "train.seed", "run_name", "output_dir", "train.resume", "eval.test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlp-decouple tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe every trial starts from")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="methods=a,b trials=N seeds=100,... space.KEY=SPEC and any recipe override")
    parser.add_argument("--out", type=Path, default=None, help="sweep directory (default: <output_dir>/tune-<recipe name>)")
    parser.add_argument("--export", action="store_true", help="only rewrite OUT/<method>.yaml from the studies")
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="epochs every trial trains before the pruner may stop it (default 1)")
    parser.add_argument(OVERRIDE, action="store_true", help="go on with studies whose trials ran other code")
    args = parser.parse_intermixed_args(argv)
    if args.warmup_epochs < 0:
        raise UserError("--warmup-epochs must be >= 0")
    return args


def split_tune(overrides: list[str]) -> tuple[list[str], list[int], int | None, list[tuple[str, str]], list[str]]:
    """``methods=``, ``seeds=``, ``trials=`` and the ``space.*`` items out of the overrides; the rest is common."""
    methods, seeds, trials, specs, common = ["bp", "scpl"], [100], None, [], []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{item!r} must look like key=value, e.g. trials=20")
        if key == "methods":
            methods = [m.strip() for m in value.split(",") if m.strip()]
            unknown = [m for m in methods if m not in METHODS]
            if unknown or not methods or len(set(methods)) != len(methods):
                raise UserError(f"methods={value}: give distinct names from {','.join(METHODS)}")
        elif key == "seeds":
            try:
                seeds = [int(s) for s in value.split(",") if s.strip()]
            except ValueError:
                seeds = []
            if not seeds or len(set(seeds)) != len(seeds):
                raise UserError(f"seeds={value}: give distinct integers separated by commas, e.g. seeds=100,101")
            if REPORT_SEEDS & set(seeds):
                raise UserError(f"seeds={value}: {','.join(map(str, sorted(REPORT_SEEDS & set(seeds))))} are the "
                                "reporting seeds of compare; tune on others (e.g. seeds=100,101) so reports stay unseen")
        elif key == "trials":
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"trials={value}: give the number of finished trials per method, e.g. trials=20")
            trials = int(value)
        elif key.startswith("space."):
            specs.append((key[len("space."):], value))
        elif key in SET_BY_TUNE:
            raise UserError(f"{key} is set by tune for each trial: use methods=, seeds= or --out instead")
        else:
            common.append(item)
    return methods, seeds, trials, specs, common


def check_spaces(recipe: str, common: list[str], spaces: dict) -> None:
    """Every searched value, each alone, gives a valid config: a typo or a bad range fails before training."""
    for method, space in spaces.items():
        for key, dim in space.items():
            for value in dim.extremes():
                try:
                    load_config(recipe, [*common, f"method.name={method}", f"{key}={format_value(value)}"])
                except UserError as err:
                    raise UserError(f"space.{key}={dim.spec()} ({method}): {err}") from None


def claim(study, recipe: str, base: dict, space: dict, seeds: list[int], trials: int,
          other_versions: bool = False) -> None:
    """Record what the study tunes, or refuse a sweep folder holding another experiment, or trials run by
    other code (unless ``other_versions``)."""
    code = code_version()["id"]
    settings = {"recipe": recipe, "base": base, "space": {k: d.spec() for k, d in space.items()}, "seeds": seeds,
                "code": code}
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    else:
        if stored.get("code") != code and not other_versions:
            raise UserError(f"the {study.study_name} study in this sweep folder ran its trials with other code "
                            f"({stored.get('code') or 'not recorded'}, now {code}): give another --out or delete the "
                            f"folder to start over, or go on with it anyway with {OVERRIDE}")
        same = {"recipe/overrides": run_identity(stored["base"]) == run_identity(base),
                "space": stored["space"] == settings["space"], "seeds": stored["seeds"] == seeds}
        if not all(same.values()):
            raise UserError(f"the {study.study_name} study in this sweep folder was made with other settings (changed: "
                            f"{', '.join(k for k, ok in same.items() if not ok)}): give another --out, or delete the "
                            "folder to start over")
    study.set_user_attr("trials", trials)


def export(out: Path, methods: list[str]) -> None:
    """Rewrite each method's tuned recipe from its study."""
    from ..tuning.recipe import write_recipe
    from ..tuning.study import open_study

    for method in methods:
        prov = write_recipe(open_study(out, method, create=False), out)
        if prov is None:
            print(f"[tune] {method}: no complete trial yet, no recipe written", flush=True)
        else:
            print(f"[tune] {method}: best trial {prov['best_trial']} of {prov['finished']} finished, validation "
                  f"accuracy {prov['best_value']:.4f} -> {out / f'{method}.yaml'}", flush=True)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require("optuna", "nlp-decouple tune")
    methods, seeds, trials, specs, common = split_tune(args.overrides)
    base = load_config(args.recipe, common)  # a bad override fails here, before anything trains
    out = args.out or Path(base.output_dir) / f"tune-{Path(args.recipe).stem}"
    if args.export:
        if not (out / "study.db").is_file():
            raise UserError(f"{out / 'study.db'} not found: run tune first, or give the sweep folder with --out")
        export(out, methods)
        return 0
    if trials is None:
        raise UserError("give the trial budget per method, e.g. trials=20")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("tune runs its trials in one process: start it without a multi-process launcher")
    fixed = {item.partition("=")[0] for item in common}
    spaces = build_spaces(methods, specs, fixed)
    check_spaces(args.recipe, common, spaces)
    setup_console()
    from ..tuning.study import MethodStudy, finished, open_study, retry_orphans, run_study, sweep_lock

    with sweep_lock(out):
        for method in methods:
            study = open_study(out, method)
            method_common = [*common, f"method.name={method}"]
            claim(study, str(args.recipe), load_config(args.recipe, method_common).to_dict(), spaces[method], seeds, trials,
                  args.reuse_other_versions)
            retried = retry_orphans(study)
            if retried:
                log.info("%s: trial(s) %s were cut short by a killed tune; they run again", method, retried)
            log.info("%s: %d of %d trials finished; searching %s", method, finished(study), trials,
                     ", ".join(f"{k}={d.spec()}" for k, d in spaces[method].items()))
            spec = MethodStudy(method, str(args.recipe), method_common, spaces[method], seeds, out)
            run_study(spec, study, trials, args.warmup_epochs)
            export(out, [method])
    return 0


if __name__ == "__main__":
    sys.exit(main())
