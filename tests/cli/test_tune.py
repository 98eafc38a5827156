"""tune: Optuna studies in SQLite, trials on validation only, tuned recipes from the study, resumable after a kill."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib

import optuna
import pytest
import yaml

from conftest import REPO
from nlp_decouple.cli.tune import main
from nlp_decouple.config import load_config
from nlp_decouple.tuning.recipe import read_provenance
from nlp_decouple.tuning.space import DEFAULT_SPACES, build_spaces, parse_dim
from nlp_decouple.tuning.study import MethodStudy, open_study, run_study, sampler_seed, storage_url

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
TINY = ["train.epochs=2", "data.synthetic_train_size=200", "data.synthetic_test_size=50", "model.hidden_size=16",
        "model.num_layers=1", "tokenizer.vocab_size=200", "train.batch_size=32", "eval.every_group=false"]


def config_value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_tune_writes_studies_and_recipes_of_the_best_trials_without_touching_test(tmp_path, one_thread, capsys):
    out = tmp_path / "sweep"
    assert main([RECIPE, "methods=bp,scpl", "trials=2", *TINY, "--out", str(out)]) == 0
    for method in ("bp", "scpl"):
        study = optuna.load_study(study_name=method, storage=storage_url(out))
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
        best = study.best_trial
        assert best.value == max(t.value for t in study.trials)
        assert set(best.params) == {"train.lr", "train.weight_decay",
                                    "method.temperature" if method == "scpl" else "model.dropout"}
        recipe = out / f"{method}.yaml"
        cfg = load_config(recipe)  # loadable by train / compare
        assert all(config_value(cfg, k) == v for k, v in best.params.items())
        assert (cfg.method.name, cfg.train.seed, cfg.eval.test, cfg.train.epochs) == (method, 0, True, 2)
        prov = read_provenance(recipe)
        assert (prov["best_trial"], prov["best_value"], prov["budget"], prov["finished"]) == (best.number, best.value, 2, 2)
        assert prov["tuning_seeds"] == [100] and prov["storage"] == storage_url(out)
        assert prov["code"] == study.user_attrs["settings"]["code"]
        # the study is the one source: the recipe is rewritten from it identically
        text = recipe.read_text()
        recipe.unlink()
        assert main([RECIPE, f"methods={method}", *TINY, "--out", str(out), "--export"]) == 0
        assert recipe.read_text() == text
        for trial in study.trials:  # validation only: the test split was never scored
            run = out / method / f"trial{trial.number:03d}-seed100"
            assert json.loads((run / "results.json").read_text())["test_accuracy"] is None
            assert not (run / "test_predictions.json").exists() and not (run / "checkpoints").exists()
            assert (run / "best" / "config.json").is_file() and not (run / "last").exists()
            assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["test"] is False
            assert max(json.loads(line)["validation"]["accuracy"] for line in (run / "metrics.jsonl").open()) \
                == trial.value
    # compare refuses to report a tuned recipe on its tuning seeds
    from nlp_decouple.cli.compare import main as compare

    capsys.readouterr()
    assert compare([str(out / "bp.yaml"), "methods=bp", "seeds=1,100", "--out", str(tmp_path / "cmp")]) == 2
    assert "seeds [100] tuned" in capsys.readouterr().err
    # the same folder with other settings is refused rather than mixed into the study
    capsys.readouterr()
    assert main([RECIPE, "methods=bp", "trials=3", *TINY, "model.hidden_size=8", "--out", str(out)]) == 2
    assert "other settings (changed: recipe/overrides)" in capsys.readouterr().err


def test_a_pruned_trial_stops_after_its_epoch_and_leaves_the_process_clean(tmp_path, one_thread):
    space = {"train.lr": parse_dim("train.lr", "log:1e-3:1e-2")}
    spec = MethodStudy("bp", RECIPE, [*TINY, "method.name=bp"], space, [100], tmp_path)
    study = open_study(tmp_path, "bp")
    study.set_user_attr("settings", {})
    handler = signal.getsignal(signal.SIGINT)
    # prunes whatever is reported from epoch 1 on
    run_study(spec, study, trials=1, warmup_epochs=0, pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run = tmp_path / "bp" / "trial000-seed100"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and not (run / "results.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's stop handler is gone again


def test_the_mean_over_tuning_seeds_is_the_objective_and_each_seed_reports_its_epochs(tmp_path, one_thread):
    space = {"train.lr": parse_dim("train.lr", "log:1e-3:1e-2")}
    spec = MethodStudy("bp", RECIPE, [*TINY, "method.name=bp"], space, [100, 101], tmp_path)
    study = open_study(tmp_path, "bp")
    run_study(spec, study, trials=1, warmup_epochs=0)
    (trial,) = study.trials
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # seed 100's epochs 1-2, then seed 101's
    best = [json.loads((tmp_path / "bp" / f"trial000-seed{s}" / "results.json").read_text())["validation_accuracy"]
            for s in (100, 101)]
    assert trial.value == pytest.approx(sum(best) / 2)


def test_every_method_searches_three_keys_with_the_same_learning_rate_range():
    spaces = build_spaces(list(DEFAULT_SPACES), [], set())
    assert {len(space) for space in spaces.values()} == {3}
    assert {space["train.lr"].spec() for space in spaces.values()} == {"log:0.0001:0.03"}
    assert all("train.weight_decay" in space for space in spaces.values())


def test_samplers_draw_a_stream_per_method_the_same_on_every_machine():
    seeds = {m: sampler_seed(m, 100, 0) for m in DEFAULT_SPACES}
    assert len(set(seeds.values())) == len(seeds)
    assert seeds["bp"] == (zlib.crc32(b"bp") + 100 * 7919) % 2**32  # not Python's per-process hash()
    assert sampler_seed("bp", 100, 3) == seeds["bp"] + 3 and sampler_seed("bp", 101, 0) != seeds["bp"]


def test_space_defaults_scopes_and_fixed_keys():
    spaces = build_spaces(["bp", "scpl"], [("model.dropout", "off"), ("train.batch_size", "int:32:256:log"),
                                           ("scpl.method.temperature", "float:0.05:0.5")], fixed={"method.projection"})
    assert set(spaces["bp"]) == {"train.lr", "train.weight_decay", "train.batch_size"}  # dropout off
    assert set(spaces["scpl"]) == {"train.lr", "train.weight_decay", "train.batch_size", "method.temperature"}
    assert spaces["scpl"]["method.temperature"].spec() == "float:0.05:0.5"
    assert spaces["bp"]["train.lr"].spec() == "log:0.0001:0.03" and spaces["bp"]["train.batch_size"].log
    fixed = build_spaces(["scpl"], [], fixed={"method.temperature"})["scpl"]
    assert set(fixed) == {"train.lr", "train.weight_decay"}
    assert parse_dim("method.projection", "choice:mlp,mlp_bn").choices == ("mlp", "mlp_bn")
    assert parse_dim("train.lr", "choice:1e-3,3e-3").choices == (1e-3, 3e-3)  # numbers, not YAML 1.1 text


@pytest.mark.parametrize("args, message", [
    (["space.train.lr=log:0:1"], "log scale needs LOW > 0"),
    (["space.train.lr=uniform:1e-4:1e-2"], "unknown form 'uniform'"),
    (["space.train.lr=float:1e-2:1e-4"], "LOW must be below HIGH"),
    (["space.train.batch_size=int:a:64"], "must be integers"),
    (["space.method.projection=choice:"], "distinct values"),
    (["space.train.lrr=log:1e-4:1e-2"], "did you mean train.lr"),
    (["space.train.batch_size=float:16:64"], "train.batch_size: expected int"),
    (["space.model.dropout=float:0:1.5"], "model.dropout: 1.5 must be in [0, 1)"),
    (["train.lr=1e-3", "space.train.lr=log:1e-4:1e-2"], "both fixed"),
    (["space.train.mixed_precision=choice:no,bf16"], "fix it for every trial with train.mixed_precision=..."),
    (["space.al.method.label_dim=choice:64,128"], "al is not among methods"),
    (["space.train.lr=off", "space.train.weight_decay=off", "space.model.dropout=off"], "nothing left to tune for bp"),
    (["seeds=0,100"], "reporting seeds"),
    (["methods=bp,sgd"], "distinct names"),
    (["eval.test=true"], "set by tune"),
    (["trials=0"], "trials=0"),
    ([], "trial budget"),
])
def test_bad_arguments_exit_2_with_one_clear_line(args, message, tmp_path, capsys):
    trials = [] if any(a.startswith("trials=") for a in args) or not args else ["trials=1"]
    assert main([RECIPE, "methods=bp", *trials, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "study.db").exists()  # refused before anything was created


def _trials(db) -> dict[int, tuple[str, int]]:
    """Trial number -> (state, how many values drawn), read straight from the SQLite file."""
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        try:
            rows = con.execute("SELECT t.number, t.state, COUNT(p.param_id) FROM trials t "
                           "LEFT JOIN trial_params p ON p.trial_id = t.trial_id GROUP BY t.trial_id").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return {}
    return {number: (state, params) for number, state, params in rows}


def test_tune_resumes_after_sigkill(tmp_path, one_thread):
    out = tmp_path / "sweep"
    args = [RECIPE, "methods=bp", "trials=2", *TINY, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nlp_decouple.tune", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    searched = len(DEFAULT_SPACES["bp"])
    try:  # kill -9 once trial 0 has finished and trial 1 has drawn all its values (it is training)
        while _trials(out / "study.db").get(1, ("", 0))[1] < searched:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "tune did not reach its second trial"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    trials = _trials(out / "study.db")
    assert trials[0][0] == "COMPLETE" and trials[1][0] == "RUNNING"
    assert main(args) == 0  # the same command again
    study = optuna.load_study(study_name="bp", storage=storage_url(out))
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    killed, retry = study.trials[1], study.trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == killed.params
    prov = read_provenance(out / "bp.yaml")
    assert (prov["finished"], prov["failed"]) == (2, 1)
    assert load_config(out / "bp.yaml").train.lr == study.best_trial.params["train.lr"]


def test_a_study_whose_trials_ran_other_code_is_refused_unless_asked(tmp_path, monkeypatch):
    from nlp_decouple.cli import tune

    study = optuna.create_study(study_name="bp", direction="maximize")
    base, space = load_config(RECIPE, TINY).to_dict(), build_spaces(["bp"], [], set())["bp"]
    tune.claim(study, RECIPE, base, space, [100], 2)
    assert study.user_attrs["settings"]["code"] == tune.code_version()["id"]
    tune.claim(study, RECIPE, base, space, [100], 3)  # the same code: the study goes on
    monkeypatch.setattr(tune, "code_version", lambda: {"id": "git:0123456789abcdef"})
    with pytest.raises(tune.UserError, match="ran its trials with other code .*--reuse-other-versions"):
        tune.claim(study, RECIPE, base, space, [100], 3)
    tune.claim(study, RECIPE, base, space, [100], 3, other_versions=True)


def test_a_trial_stopped_by_a_signal_continues_from_its_checkpoint(tmp_path, one_thread, monkeypatch):
    from nlp_decouple.tuning import study as tuning

    out = tmp_path / "sweep"
    args = [RECIPE, "methods=bp", "trials=2", *TINY, "train.epochs=3", "--out", str(out)]
    train_one = tuning.train_one

    def stopped_in_trial_1(cfg, on_epoch):
        def after(row):
            on_epoch(row)
            if cfg.run_name.startswith("trial001") and row["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the trainer stops at its next chunk, with a checkpoint
        train_one(cfg, after)

    monkeypatch.setattr(tuning, "train_one", stopped_in_trial_1)
    assert main(args) == 2
    stopped = out / "bp" / "trial001-seed100"
    assert (stopped / "checkpoints").is_dir()
    first_epoch = (stopped / "metrics.jsonl").read_text().splitlines()[0]
    monkeypatch.setattr(tuning, "train_one", train_one)
    assert main(args) == 0  # the same command again
    study = optuna.load_study(study_name="bp", storage=storage_url(out))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = study.trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == study.trials[1].params
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # epoch 1 from before the stop, for the pruner too
    run = out / "bp" / "trial002-seed100"
    assert not stopped.exists() and (run / "metrics.jsonl").read_text().splitlines()[0] == first_epoch
    # continued exactly: the same value as the same settings trained without a stop
    ref = load_config(RECIPE, [*TINY, "train.epochs=3", "method.name=bp", "train.seed=100", "eval.test=false",
                               "train.progress=false", f"output_dir={tmp_path / 'ref'}", "run_name=ref",
                               *(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in retry.params.items())])
    train_one(ref, lambda row: None)
    assert retry.value == max(json.loads(line)["validation"]["accuracy"]
                              for line in (tmp_path / "ref" / "ref" / "metrics.jsonl").read_text().splitlines())


def test_a_cut_short_run_this_code_may_not_continue_starts_afresh(tmp_path, one_thread, caplog):
    from nlp_decouple.tuning.study import train_one

    space = {"train.lr": parse_dim("train.lr", "log:1e-3:1e-2")}
    spec = MethodStudy("bp", RECIPE, [*TINY, "method.name=bp"], space, [100], tmp_path)
    other = load_config(RECIPE, [*TINY, "model.hidden_size=8", "method.name=bp", "train.seed=100",
                                 "train.progress=false", f"output_dir={tmp_path / 'old'}", "run_name=cut"])
    train_one(other, lambda row: None)  # a run with checkpoints, of another model size
    assert (tmp_path / "old" / "cut" / "checkpoints").is_dir()
    study = open_study(tmp_path, "bp")
    study.enqueue_trial({"train.lr": 3e-3}, user_attrs={"resume_runs": {"100": str(tmp_path / "old" / "cut")}})
    run_study(spec, study, trials=1, warmup_epochs=0)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2]
    assert "starting this run afresh" in caplog.text
    run = tmp_path / "bp" / "trial000-seed100"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden_size"] == 16
