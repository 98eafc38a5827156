"""compare: every method x seed trained in its own run directory, resumable, then a report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SWEEP_METHODS, SWEEP_OVERRIDES, SWEEP_SEEDS, run_sweep
from nlp_decouple.cli.compare import main, parse_args, plan, record_source, split_sweep
from nlp_decouple.errors import UserError

RECIPE = str(REPO / "recipes" / "quickstart.yaml")


def test_sweep_trains_every_method_and_seed_with_identical_settings(tiny_sweep):
    configs = {}
    for method in SWEEP_METHODS:
        for seed in SWEEP_SEEDS:
            run = tiny_sweep / f"{method}-seed{seed}"
            results = json.loads((run / "results.json").read_text())
            assert (results["method"], results["seed"]) == (method, seed)
            assert (run / "best" / "config.json").is_file() and (run / "train.log").is_file()
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["method"].pop("name"), cfg["train"].pop("seed"), cfg.pop("run_name")
            configs[(method, seed)] = cfg
    first = next(iter(configs.values()))
    assert all(c == first for c in configs.values())  # same data, tokenizer, model size and budget
    assert first["train"]["epochs"] == 2 and first["model"]["hidden_size"] == 16
    assert (tiny_sweep / "report" / "report.md").is_file() and (tiny_sweep / "report" / "report.json").is_file()
    source = json.loads((tiny_sweep / "bp-seed0" / "source_recipe.json").read_text())
    assert source == {"recipe": RECIPE, "overrides": SWEEP_OVERRIDES, "tune_provenance": None}
    report = json.loads((tiny_sweep / "report" / "report.json").read_text())
    assert report["statistics"]["margin"] == 1.0 and report["statistics"]["comparisons"] == len(SWEEP_METHODS) - 1
    assert "not the methods" in (tiny_sweep / "report" / "report.md").read_text()  # quickstart is not tuned


def test_sweep_resumes_without_retraining_completed_runs(tiny_sweep, train_forks, tmp_path, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, out)
    done = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("*/results.json")}
    # one run interrupted after its last checkpoint (no results.json yet): it is resumed, not restarted
    interrupted = out / "al-seed1"
    metrics_before = (interrupted / "metrics.jsonl").read_text()
    (interrupted / "results.json").unlink()
    capsys.readouterr()
    run_sweep(out, seeds=[*SWEEP_SEEDS, 2], forks=train_forks)  # and one new seed per method
    log = capsys.readouterr().out
    assert "9 runs" in log and "5 done, 4 to train" in log
    for name, (mtime, text) in done.items():
        if name != "al-seed1":
            path = out / name / "results.json"
            assert path.stat().st_mtime_ns == mtime and path.read_text() == text  # untouched
    assert "resuming" in (out / "al-seed1" / "train.log").read_text() or "resumed from" in (out / "al-seed1" / "train.log").read_text()
    assert (interrupted / "metrics.jsonl").read_text() == metrics_before  # no epoch trained again
    assert json.loads((interrupted / "results.json").read_text())["test_accuracy"] == \
        json.loads(done["al-seed1"][1])["test_accuracy"]
    for method in SWEEP_METHODS:
        assert (out / f"{method}-seed2" / "results.json").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(len(r["seeds"]) for r in report["rows"]) == [3, 3, 3]


def test_plan_validates_every_run_and_refuses_a_directory_with_other_settings(tiny_sweep, tmp_path):
    runs = plan(RECIPE, ["bp", "al"], [0, 1], SWEEP_OVERRIDES, tiny_sweep)
    assert [(r.method, r.seed, r.state) for r in runs] == [("bp", 0, "done"), ("bp", 1, "done"),
                                                           ("al", 0, "done"), ("al", 1, "done")]
    with pytest.raises(UserError, match="other settings"):
        plan(RECIPE, ["bp"], [0], [*SWEEP_OVERRIDES, "train.lr=0.1"], tiny_sweep)
    assert plan(RECIPE, ["bp"], [0], SWEEP_OVERRIDES, tmp_path)[0].state == "new"
    with pytest.raises(UserError, match="train.epochs"):
        plan(RECIPE, ["bp"], [0], ["train.epochs=zero"], tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["methods=bp,sgd"], "unknown"), (["seeds=a,b"], "integers"), (["methods="], "unknown"),
    (["method.name=bp"], "set by compare"), (["train.seed=3"], "set by compare"), (["seeds=1,1"], "repeat"),
])
def test_sweep_arguments_are_checked(overrides, message):
    with pytest.raises(UserError, match=message):
        split_sweep(overrides)


def test_sweep_defaults_and_passthrough():
    methods, seeds, rest = split_sweep(["methods=scpl,al", "train.lr=0.01"])
    assert methods == ["scpl", "al"] and seeds == [0, 1, 2, 3, 4] and rest == ["train.lr=0.01"]


def test_margin_is_checked():
    assert parse_args(["r.yaml", "--margin", "0.5"]).margin == 0.5 and parse_args(["r.yaml"]).margin == 1.0
    with pytest.raises(UserError, match="--margin"):
        parse_args(["r.yaml", "--margin", "-1"])


def test_a_tuned_recipes_provenance_goes_into_each_run(tmp_path):
    from nlp_decouple.tuning.recipe import PROVENANCE_TAG

    provenance = {"study": "scpl", "params": {"train.lr": 0.002}, "tuning_seeds": [100]}
    recipe = tmp_path / "scpl.yaml"
    recipe.write_text(f"# tuned\n{PROVENANCE_TAG}{json.dumps(provenance)}\n" + Path(RECIPE).read_text())
    runs = plan(str(recipe), ["scpl"], [0, 1], SWEEP_OVERRIDES, tmp_path / "sweep")
    record_source(str(recipe), SWEEP_OVERRIDES, runs)
    for run in runs:
        source = json.loads((run.run_dir / "source_recipe.json").read_text())
        assert source == {"recipe": str(recipe), "overrides": SWEEP_OVERRIDES, "tune_provenance": provenance}
    assert plan(str(recipe), ["scpl"], [0, 1], SWEEP_OVERRIDES, tmp_path / "sweep")[0].state == "new"


@pytest.mark.parametrize("change, reason", [("code", "by other code"), ("data", "on other data"),
                                            ("unrecorded", "by other code (not recorded")])
def test_a_run_made_by_other_code_or_data_is_refused_in_one_line_unless_asked(tiny_sweep, tmp_path, capsys, change,
                                                                             reason):
    out = tmp_path / "sweep"
    shutil.copytree(tiny_sweep / "bp-seed0", out / "bp-seed0")
    path = out / "bp-seed0" / "results.json"
    results = json.loads(path.read_text())
    if change == "code":
        results["code_version"]["id"] = "git:0123456789abcdef"
    elif change == "data":
        results["data_fingerprint"] = "0123456789abcdef"
    else:  # made before runs recorded their versions
        del results["code_version"], results["data_fingerprint"]
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert main([RECIPE, "methods=bp", "seeds=0", *SWEEP_OVERRIDES, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"bp-seed0 was made {reason}" in err and "--reuse-other-versions" in err
    assert plan(RECIPE, ["bp"], [0], SWEEP_OVERRIDES, out, other_versions=True)[0].state == "done"


def test_an_interrupted_run_of_other_code_is_refused_or_resumed_with_the_override(tiny_sweep, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(tiny_sweep / "al-seed1", out / "al-seed1")
    (out / "al-seed1" / "results.json").unlink()
    assert plan(RECIPE, ["al"], [1], SWEEP_OVERRIDES, out)[0].state == "resume"  # the same code: resumed as is
    newest = sorted((out / "al-seed1" / "checkpoints").glob("step_*"))[-1] / "trainer_state.json"
    state = json.loads(newest.read_text())
    state["identity"]["code"] = "git:0123456789abcdef"
    newest.write_text(json.dumps(state))
    with pytest.raises(UserError, match="al-seed1 was made by other code"):
        plan(RECIPE, ["al"], [1], SWEEP_OVERRIDES, out)
    run = plan(RECIPE, ["al"], [1], SWEEP_OVERRIDES, out, other_versions=True)[0]
    assert run.state == "resume" and "train.resume_other_versions=true" in run.overrides
