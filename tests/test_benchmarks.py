"""The benchmark scripts run end to end on tiny settings and write what docs/benchmarks.md reads
(smoke tests: no timing is asserted)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import AG_NEWS, HF_CACHE, REPO, SHARED, SWEEP_SEEDS, need

from nlp_decouple.config import load_config
from nlp_decouple.tuning.recipe import read_provenance

pytestmark = pytest.mark.usefixtures("one_thread")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_throughput_grid_has_every_mode_and_ratios_to_bp(tmp_path, encoder):
    out = tmp_path / "tp.json"
    modes = "bp,bp_1thread,scpl_1thread,scpl_sequential,scpl_pipeline"
    assert script("pipeline_throughput").main(
        ["--encoder", encoder, "--layers", "1", "2", "--batch-size", "8", "--batches", "2", "--warmup", "1",
         "--repeats", "2",
         "--hidden", "16", "--heads", "2", "--seq-len", "12", "--modes", modes, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(c["blocks"], c["batch_size"]) for c in report["configs"]] == [(2, 8), (3, 8)]
    for config in report["configs"]:
        assert [r["mode"] for r in config["results"]] == modes.split(",")
        bp = config["results"][0]
        assert bp["ratio_to_bp"] == 1.0
        for r in config["results"]:
            rounds = r["samples_per_s_rounds"]
            assert len(rounds) == 2 and min(rounds) > 0 and r["samples_per_s"] == pytest.approx(sum(rounds) / 2)
            per_round = [x / b for x, b in zip(rounds, bp["samples_per_s_rounds"])]
            assert r["ratio_to_bp_rounds"] == pytest.approx(per_round)
            assert r["ratio_to_bp"] == pytest.approx(sum(per_round) / 2)  # the median of two
        by_mode = {r["mode"]: r for r in config["results"]}
        assert by_mode["bp_1thread"]["threads"] == 1 and by_mode["scpl_1thread"]["threads"] == 1
        assert config["pipeline_efficiency"] == pytest.approx(
            by_mode["scpl_pipeline"]["samples_per_s"] / (2 * by_mode["scpl_1thread"]["samples_per_s"]))
        assert config["pipeline_ceiling_over_bp"] == pytest.approx(
            2 * by_mode["bp_1thread"]["samples_per_s"] / bp["samples_per_s"])


def test_time_to_accuracy_reads_finished_runs(tiny_sweep, tmp_path, monkeypatch):
    runs = [str(tiny_sweep / f"{m}-seed{s}") for m in ("bp", "al") for s in SWEEP_SEEDS]
    out, png = tmp_path / "tta.json", tmp_path / "tta.png"
    monkeypatch.setattr(sys, "argv", ["tta", *runs, "--targets", "0.3", "1.01", "--out", str(out), "--png", str(png)])
    script("time_to_accuracy").main()
    report = json.loads(out.read_text())
    assert {(r["method"], tuple(r["seeds"])) for r in report["summary"]} == {("al", (0, 1)), ("bp", (0, 1))}
    for row in report["summary"]:
        assert row["time_to_1.01_s"] is None and row["seeds_reaching_1.01"] == 0  # never reached
        curves = [c for c in report["curves"] if c["method"] == row["method"]]
        reach = [next((t for t, a in zip(c["time_s"], c["validation_accuracy"]) if a >= 0.3), None) for c in curves]
        if all(r is not None for r in reach):
            assert row["time_to_0.3_s"] == pytest.approx(sum(reach) / len(reach))
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("folder", [True, False])
def test_time_to_accuracy_sh_trains_each_method_with_its_tuned_recipe(tmp_path, folder):
    """A folder of tuned recipes gives BP bp.yaml and SCPL scpl.yaml; one recipe file serves both. The
    launchers are stubs on PATH that log their arguments (what is tested is the script's dispatch)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (bin_dir / name).chmod(0o755)
    tuned = tmp_path / "tune"
    tuned.mkdir()
    (tuned / "bp.yaml").write_text("x")
    (tuned / "scpl.yaml").write_text("x")
    recipe = tuned if folder else tuned / "bp.yaml"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/time_to_accuracy.sh"), str(tmp_path / "out"), "3", "2",
                           str(recipe), "model.hidden_size=8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    bp = next(c for c in calls if "method.name=bp" in c)
    scpl = next(c for c in calls if "method.name=scpl" in c)
    assert f"{tuned}/bp.yaml" in bp.split() and "train.seed=3" in bp and "model.hidden_size=8" in bp
    assert scpl.startswith("torchrun") and "train.pipeline=processes" in scpl
    assert f"{tuned}/{'scpl' if folder else 'bp'}.yaml" in scpl.split()
    (tuned / "scpl.yaml").unlink()
    if folder:
        proc = subprocess.run(["bash", str(REPO / "benchmarks/time_to_accuracy.sh"), str(tmp_path / "out"), "3",
                               "2", str(tuned)], env=env, capture_output=True, text=True)
        assert proc.returncode == 2 and "scpl.yaml" in proc.stderr


def test_time_to_a_fraction_of_bps_best(tiny_sweep, tmp_path, monkeypatch):
    runs = [str(tiny_sweep / f"{m}-seed{s}") for m in ("bp", "al") for s in SWEEP_SEEDS]
    out, png = tmp_path / "tta.json", tmp_path / "tta.png"
    curves = [script("time_to_accuracy").curve(Path(r)) for r in runs]
    # a fraction every run of both methods reaches by its last epoch, so both ratios are defined
    fraction = min(max(c["validation_accuracy"]) for c in curves) / max(
        max(c["validation_accuracy"]) for c in curves if c["method"] == "bp")
    monkeypatch.setattr(sys, "argv", ["tta", *runs, "--of-best", "bp", str(fraction), "--out", str(out),
                                      "--png", str(png)])
    script("time_to_accuracy").main()
    report = json.loads(out.read_text())
    (encoder,) = report["of_best"]
    by_run = {(c["method"], c["seed"]): c for c in report["curves"]}
    best = sum(max(by_run["bp", s]["validation_accuracy"]) for s in SWEEP_SEEDS) / len(SWEEP_SEEDS)
    target = fraction * best
    assert report["of_best"][encoder]["target"] == pytest.approx(target)
    rows = {r["method"]: r["of_best"] for r in report["summary"]}
    for method, row in rows.items():
        want = [next(t for t, a in zip(by_run[method, s]["time_s"], by_run[method, s]["validation_accuracy"])
                     if a >= target) for s in SWEEP_SEEDS]
        assert row["seed_times_s"] == want and row["mean_s"] == pytest.approx(sum(want) / len(want))
    assert rows["bp"]["ratio_to_bp"] == 1.0
    assert rows["al"]["ratio_to_bp"] == pytest.approx(rows["al"]["mean_s"] / rows["bp"]["mean_s"])
    monkeypatch.setattr(sys, "argv", ["tta", *runs, "--of-best", "bp", "most", "--out", str(out), "--png", str(png)])
    with pytest.raises(SystemExit) as exited:
        script("time_to_accuracy").main()
    assert exited.value.code == 2


def test_process_pipeline_mode_trains_exactly_as_sequential_scpl(tmp_path):
    out = tmp_path / "pp.json"
    assert script("pipeline_throughput").main(
        ["--layers", "2", "--batch-size", "8", "--batches", "2", "--warmup", "1", "--repeats", "1", "--hidden", "16",
         "--seq-len", "12", "--modes", "bp,scpl_sequential,scpl_processes", "--out", str(out)]) == 0
    by_mode = {r["mode"]: r for r in json.loads(out.read_text())["configs"][0]["results"]}
    ranks = by_mode["scpl_processes"]
    assert ranks["processes"] == 2 and ranks["threads_per_process"] == 1 and ranks["ratio_to_bp"] > 0
    assert ranks["last_losses"] == by_mode["scpl_sequential"]["last_losses"]  # same batches, same updates


def test_torch_pipelined_bp_modes_train_as_bp(tmp_path):
    out = tmp_path / "torch.json"
    assert script("pipeline_throughput").main(
        ["--layers", "2", "--batch-size", "8", "--batches", "2", "--warmup", "1", "--repeats", "1", "--hidden", "16",
         "--seq-len", "12", "--micro-batches", "3", "--modes", "bp,bp_torch_gpipe,bp_torch_1f1b", "--out", str(out)]) == 0
    by_mode = {r["mode"]: r for r in json.loads(out.read_text())["configs"][0]["results"]}
    for mode in ("bp_torch_gpipe", "bp_torch_1f1b"):
        assert by_mode[mode]["processes"] == 2 and by_mode[mode]["ratio_to_bp"] > 0
        # same batches and updates (8 rows in micro-batches of 3, 3, 2): bp's loss up to float rounding
        assert by_mode[mode]["last_losses"] == pytest.approx(by_mode["bp"]["last_losses"], rel=1e-5)


def test_gpu_check_skips_every_cuda_check_cleanly_without_a_gpu():
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run bash benchmarks/gpu_check.sh itself")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], check=False, cwd=REPO, capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r[0].lstrip("| ") for r in rows]
    assert names[:2] == ["thread_pipeline", "process_pipeline"] and "throughput" in names and "agnews_scpl" in names
    assert {f"bf16_{m}" for m in ("bp", "scpl", "early_exit", "deinforeg", "al")} <= set(names)
    assert all(r[1] == "skip" for r in rows), rows


def test_gpu_checks_one_gpu_rows_run_on_the_cpu_and_report_their_goal():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--only",
                           "one_gpu_transformer12"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("ROWS "))[5:])
    assert [r[0] for r in rows] == ["transformer12_bp", "transformer12_scpl_sequential", "transformer12_scpl_pipeline",
                                    "transformer12_goal"]
    assert all(status == "ok" for _, status, _ in rows)
    assert rows[-1][2].startswith("scpl_pipeline ") and "goal >= 1.00x (not judged at --quick sizes)" in rows[-1][2]


@pytest.mark.parametrize("method", ["bp", "scpl"])
def test_a_constant_lr_runs_first_epochs_do_not_depend_on_its_budget(tmp_path, method):
    """What plot_epoch_budget relies on: the first k epochs of an N-epoch run are a k-epoch run."""
    from nlp_decouple.trainer import Trainer

    base = ["train.progress=false", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
            "model.num_layers=2", "data.synthetic_train_size=300", "data.synthetic_test_size=50",
            "train.batch_size=32", "eval.probe_samples=50", f"method.name={method}", f"output_dir={tmp_path}"]
    curves = {}
    for epochs in (2, 3):
        Trainer(load_config(REPO / "recipes" / "quickstart.yaml", [*base, f"train.epochs={epochs}",
                                                                  f"run_name=e{epochs}"])).fit()
        rows = [json.loads(line) for line in (tmp_path / f"e{epochs}" / "metrics.jsonl").read_text().splitlines()]
        curves[epochs] = [(r["validation"]["accuracy"], [g.get("validation") for g in r.get("groups") or []])
                          for r in rows]
    assert len(curves[3]) == 3 and curves[3][:2] == curves[2]


def test_epoch_budget_curves_are_best_so_far_of_the_longest_run(tmp_path):
    plot = script("plot_epoch_budget")
    rows = {"a": {"cell": "c", "method": "bp", "vary": "train.epochs", "curve": [0.5, 0.7, 0.6, 0.8]},
            "b": {"cell": "c", "method": "bp", "vary": "train.epochs", "curve": [0.9]},  # shorter: not kept
            "c": {"cell": "c", "method": "scpl", "vary": "train.epochs", "curve": [0.6, 0.55, 0.65]},
            "d": {"cell": "c", "method": "scpl", "vary": "train.lr", "curve": [0.99]}}
    assert plot.budget_curves(rows) == {"c": {"bp": [0.5, 0.7, 0.7, 0.8], "scpl": [0.6, 0.6, 0.65]}}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    assert plot.main([str(path), "--budgets", "1", "3", "--png", str(tmp_path / "eb.png")]) == 0
    assert (tmp_path / "eb.png").read_bytes()[:4] == b"\x89PNG"


def test_tfidf_floor_chooses_c_on_validation_and_scores_the_runs_splits(tmp_path):
    out = tmp_path / "floor.json"
    overrides = ["data.synthetic_train_size=600", "data.synthetic_test_size=300"]
    assert script("tfidf_floor").main([str(REPO / "recipes" / "quickstart.yaml"), *overrides, "--seeds", "0", "1",
                                       "--grid", "0.01", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    for run in report["runs"]:
        by_c = {float(c): a for c, a in run["validation_accuracy_by_C"].items()}
        assert run["C"] == max(by_c, key=lambda c: (by_c[c], -c))  # the choice reads validation only
        assert run["validation_accuracy"] == pytest.approx(by_c[run["C"]], abs=1e-6)
        assert (run["train"], run["test"]) == (540, 300)  # the package's own splits: 10% of train validates
        assert 0.5 < run["test_accuracy"] <= 1.0  # a bag of words gets about 70% here (chance 25%)
    accs = [r["test_accuracy"] for r in report["runs"]]
    assert report["summary"]["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)


def test_minilm_table_runs_scpl_selection_first_then_seeds_in_order(tmp_path):
    table = script("minilm_table")
    args = table.argparse.Namespace(shared=tmp_path, epochs=4, override=["eval.probe_samples=64"], seeds=[0, 1],
                                    methods=["bp", "scpl"])
    jobs = table.build_jobs(args)
    names = [j.name for j in jobs]
    assert names[:4] == ["agnews/select/scpl-plain", "agnews/select/scpl-prototypes",
                         "debian/select/scpl-plain", "debian/select/scpl-prototypes"]
    assert names[4:] == [f"{c}/seeds/{m}-seed{s}" for s in (0, 1) for c in ("agnews", "debian") for m in ("bp", "scpl")]
    for job in jobs[:4]:  # selection: a tuning seed, the test split never scored
        assert "train.seed=100" in job.overrides and "eval.test=false" in job.overrides
    assert [j.needs for j in jobs[4:8]] == [None, "agnews", None, "debian"]
    assert all("eval.probe_samples=64" in j.overrides and "train.epochs=4" in j.overrides for j in jobs)
    for job in jobs[4:]:  # the others keep the first table's heads (method.projection is DeInfoReg's too)
        pinned = all(key in job.overrides for key in table.OTHERS)
        assert pinned == (job.needs is None)
    no_scpl = table.argparse.Namespace(shared=tmp_path, epochs=4, override=[], seeds=[0], methods=["bp"])
    assert [j.name for j in table.build_jobs(no_scpl)] == ["agnews/seeds/bp-seed0", "debian/seeds/bp-seed0"]


def test_minilm_table_chooses_the_scpl_setting_with_the_higher_validation_accuracy(tmp_path):
    table = script("minilm_table")
    args = table.argparse.Namespace(shared=tmp_path, epochs=1, override=[], seeds=[0], methods=["scpl"])
    jobs = table.build_jobs(args)
    picks = [j for j in jobs if j.name.startswith("agnews/select/")]
    assert table.chosen_setting(jobs, "agnews", tmp_path) is None  # still queued: the seeds wait
    for job, (val, test) in zip(picks, [(0.80, 0.99), (0.85, 0.10)]):
        (tmp_path / job.name).mkdir(parents=True)
        (tmp_path / job.name / "results.json").write_text(json.dumps({"validation_accuracy": val,
                                                                      "test_accuracy": test}))
        job.status = "done"
    assert table.chosen_setting(jobs, "agnews", tmp_path) == "prototypes"  # validation, not test
    seed_run = next(j for j in jobs if j.name == "agnews/seeds/scpl-seed0")
    cmd = table.command(seed_run, jobs, tmp_path, "recipe.yaml")
    assert cmd[-4:-2] == table.SCPL_SETTINGS["prototypes"]
    assert cmd[-2:] == [f"output_dir={tmp_path / 'agnews' / 'seeds'}", "run_name=scpl-seed0"]
    (tmp_path / picks[1].name / "results.json").write_text(json.dumps({"validation_accuracy": 0.70}))
    picks[0].status = "failed (1)"  # a failed selection run has no say
    (tmp_path / picks[0].name / "results.json").unlink()
    assert table.chosen_setting(jobs, "agnews", tmp_path) == "prototypes"


class _Done:
    """A finished training process (what ``schedule`` polls)."""

    def poll(self):
        return 0


def test_minilm_table_schedule_holds_scpl_seeds_until_their_choice_and_keeps_the_limits(tmp_path):
    table = script("minilm_table")
    args = table.argparse.Namespace(shared=tmp_path, epochs=1, override=[], seeds=[0, 1], methods=["bp", "scpl"],
                                    parallel=2, stop_launching=1e9, kill_at=1e9)
    jobs = table.build_jobs(args)
    order, finished = [], []

    def launch(job):
        if job.needs:  # its cell's selection runs have both ended
            assert all(j.status == "done" for j in jobs if j.name.startswith(f"{job.needs}/select/"))
        assert sum(j.status == "running" for j in jobs) < args.parallel
        order.append(job.name)
        job.proc, job.status = _Done(), "running"

    def finish(job, code):
        job.status = "done" if code == 0 else "failed"
        finished.append(job.name)

    table.schedule(jobs, args, tmp_path, launch, finish, start=0.0)
    assert sorted(order) == sorted(finished) == sorted(j.name for j in jobs)
    assert order[:4] == [j.name for j in jobs[:4]]  # selection first
    jobs = table.build_jobs(args)
    args.stop_launching = -1  # past the limit before anything started
    table.schedule(jobs, args, tmp_path, launch, finish, start=0.0)
    assert {j.status for j in jobs} == {"not started (time limit)"}


@need(HF_CACHE)
def test_pretrained_cost_measures_every_stage_of_the_real_minilm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(HF_CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "cost.json"
    assert script("pretrained_cost").main(
        [str(REPO / "recipes" / "agnews_minilm.yaml"), "train.batch_size=4", "data.max_length=12", "--methods",
         "bp,scpl", "--device", "cpu", "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    bp, scpl = report["methods"]["bp"], report["methods"]["scpl"]
    assert bp["stages"] == 1 and scpl["stages"] == 3  # recipe: groups [3, 2, 2], one stage per group
    assert sum(scpl["stage_parameters"]) == scpl["parameters"]
    assert scpl["parameters"] > bp["parameters"]  # the recipe's MLP projections and class prototypes
    assert scpl["stage_parameters"][0] > 2 * scpl["stage_parameters"][1]  # the embedding table rides with stage 0
    assert scpl["step_time_vs_bp"] == pytest.approx(scpl["step_ms"] / bp["step_ms"])
    assert scpl["stage_peak_memory_mb"] == [None] * 3  # each stage trained alone; memory is read on CUDA only
    assert "largest_stage_memory_vs_bp" not in scpl


def test_sensitivity_plot_takes_numbers_words_and_lists(tmp_path):
    """--plot draws numeric values on a log axis and words or lists (1,1,2,2) as one tick each, in order."""
    import argparse

    sens = script("sensitivity")
    rows = {}
    for vary, values in {"train.lr": ["3e-3", "1e-2"], "model.lstm_pooling": ["mean", "last"],
                         "train.group_lr_scale": ["1,1,2,2", "0.5,1,1,1"]}.items():
        for k, value in enumerate(values):
            rows[f"{vary}{k}"] = {"cell": "c", "method": "scpl", "seed": 100, "vary": vary, "value": value,
                                  "fixed": [], "best_val_acc": 0.5 + k / 10, "groups": []}
    (tmp_path / "sensitivity.json").write_text(json.dumps(rows))
    png = tmp_path / "curves.png"
    sens.plot(argparse.Namespace(out=tmp_path, plot=png))
    assert png.stat().st_size > 0
    assert [sens.value_order(v)[0] for v in ("0.5,1,1,1", "1e-2", "mean")] == [1, 0, 1]


@need(AG_NEWS)
def test_sensitivity_runs_jobs_at_once_and_keeps_every_row(tmp_path, monkeypatch):
    """--jobs 2: every (value, seed, method) trains once, each row holds its own run's numbers; a second call
    finds them all done and trains nothing."""
    monkeypatch.setenv("NLP_DECOUPLE_SHARED", str(SHARED))
    sens = script("sensitivity")
    argv = ["--cell", "agnews", "--methods", "scpl", "--seeds", "1", "--vary", "train.lr=1e-3,3e-3",
            "--fixed", "data.max_train_samples=48", "data.max_eval_samples=32", "train.epochs=1",
            "train.batch_size=16", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
            "eval.every_group=false", "--jobs", "2", "--out", str(tmp_path)]
    sens.main(argv)
    rows = json.loads((tmp_path / "sensitivity.json").read_text())
    assert sorted((r["method"], r["value"]) for r in rows.values()) == [("scpl", "1e-3"), ("scpl", "3e-3")]
    for rid, row in rows.items():
        assert row == {**row, **sens.summarise(tmp_path / "runs" / rid)}
        config = yaml.safe_load((tmp_path / "runs" / rid / "config.yaml").read_text())
        assert (config["method"]["name"], config["train"]["lr"]) == (row["method"], float(row["value"]))
    logs = sorted((tmp_path / "runs").glob("*/train.log"))
    stamps = [p.stat().st_mtime for p in logs]
    sens.main(argv)  # all done: nothing trains again
    assert [p.stat().st_mtime for p in logs] == stamps


def test_sensitivity_leaves_a_pretrained_models_size_alone():
    sens = script("sensitivity")
    assert sens.size_keys(REPO / "recipes/agnews_transformer.yaml") == sens.SIZE
    assert sens.size_keys(REPO / "recipes/agnews_minilm.yaml") == ["train.epochs=5"]


def test_sensitivity_leave_one_dataset_out_known_answer():
    """Three settings on three cells: each fold picks the least mean regret on the other two cells."""
    acc = {  # setting -> cell -> validation accuracy
        "train.lr=1e-3": {"a": 0.60, "b": 0.70, "c": 0.50},
        "train.lr=3e-3": {"a": 0.66, "b": 0.69, "c": 0.58},
        "train.lr=1e-2": {"a": 0.65, "b": 0.75, "c": 0.40},
    }
    rows = {f"{c}-{s}": {"cell": c, "method": "scpl", "vary": "train.lr", "value": s.split("=")[1], "fixed": [],
                         "best_val_acc": v} for s, cells in acc.items() for c, v in cells.items()}
    rows["extra"] = {"cell": "a", "method": "scpl", "vary": "train.lr", "value": "3e-2", "fixed": [], "best_val_acc": 0.9}
    result = script("sensitivity").leave_one_out(rows, "scpl", ["a", "b", "c"])
    assert result["settings"] == 3  # 3e-2 ran on one cell only: never a candidate
    folds = {f["held_out"]: f for f in result["folds"]}
    # held out a: regrets on b, c: 1e-3 (0.05, 0.08), 3e-3 (0.06, 0) , 1e-2 (0, 0.18) -> 3e-3
    assert folds["a"]["chosen"] == "train.lr=3e-3" and folds["a"]["held_out_regret"] == pytest.approx(0.0)
    # held out b: on a, c: 1e-3 (0.06, 0.08), 3e-3 (0, 0), 1e-2 (0.01, 0.18) -> 3e-3, regret on b 0.06
    assert folds["b"]["chosen"] == "train.lr=3e-3" and folds["b"]["held_out_regret"] == pytest.approx(0.06)
    # held out c: on a, b: 1e-3 (0.06, 0.05), 3e-3 (0, 0.06), 1e-2 (0.01, 0) -> 1e-2, regret on c 0.18
    assert folds["c"]["chosen"] == "train.lr=1e-2" and folds["c"]["held_out_regret"] == pytest.approx(0.18)
    assert result["overall"] == "train.lr=3e-3"


def test_protocol_table_corrects_across_every_cell(tmp_path, capsys):
    from test_report import fake_run

    from nlp_decouple.report import build_report
    from nlp_decouple.stats import holm, paired_test

    table = script("protocol_table")
    for cell, shift in (("debian_transformer", 0), ("agnews_lstm", 4)):
        runs, root = [], tmp_path / cell / "runs"
        root.mkdir(parents=True)
        for method, wrong in (("bp", (30, 20, 40)), ("scpl", (28 + shift, 21, 37 + shift))):
            runs += [fake_run(root, method, s, range(s * 50, s * 50 + n)) for s, n in enumerate(wrong)]
            provenance = {"params": {"train.lr": 0.003}, "finished": 8, "best_value": 0.8}
            (tmp_path / cell / "tune").mkdir(parents=True, exist_ok=True)
            (tmp_path / cell / "tune" / f"{method}.yaml").write_text(f"{table.PROVENANCE}{json.dumps(provenance)}\n")
        build_report(runs, tmp_path / cell / "report", margin=2.0)
    out = tmp_path / "protocol.json"
    assert table.main([str(tmp_path), "--cells", "debian_transformer", "agnews_lstm", "--out", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["vs_bp"]]
    raw = [paired_test(r["vs_bp"]["test_accuracy_diff"], 2.0) for r in rows]
    assert len(rows) == 2 and [r["vs_bp"]["test"]["p_difference_holm"] for r in rows] == \
        pytest.approx(holm([t.p_difference for t in raw]))  # over both cells, not within each
    text = capsys.readouterr().out
    assert "Holm across the 2 comparisons of this table" in text and "±2 points" in text


def test_verdict_null_counts_false_differences_of_both_rules(tmp_path):
    out = tmp_path / "null.json"
    assert script("verdict_null").main(["--sets", "6", "--seeds", "3", "--examples", "300", "--resamples", "50",
                                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["sets"] == 6 and [r["seeds"] for r in result["results"]] == [3]
    rates = result["results"][0]["false_difference_rate"]
    assert {k: v * 6 for k, v in rates.items()} == {k: pytest.approx(round(v * 6)) for k, v in rates.items()}
    # a strong true effect is called by both rules: the simulated difference does reach the verdicts
    strong = sys.modules["verdict_null"].simulate(3, 4, 3000, 0.3, 0.12, 50, 0, effect=8.0)["false_difference_rate"]
    assert strong == {"bootstrap": 1.0, "t_test": 1.0}


@pytest.mark.slow
@need(AG_NEWS)
def test_protocol_tunes_on_validation_reports_fresh_seeds_and_refuses_runs_of_other_code(tmp_path):
    """benchmarks/protocol.sh on a tiny AG News cell: the protocol's spaces, defaults, early stopping and seeds,
    then a rerun that refuses a run of other code in one line unless REUSE_OTHER_VERSIONS=1."""
    env = {**os.environ, "SHARED": str(SHARED), "METHODS": "bp,scpl", "TRIALS": "1", "EPOCHS": "2", "PATIENCE": "1",
           "SEEDS": "10,11", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "EXTRA": "data.max_train_samples=200 model.hidden_size=16 model.num_layers=1 eval.probe_samples=50 "
                    "tokenizer.vocab_size=2000 eval.every_group=false"}

    def protocol(**more):
        return subprocess.run(["bash", str(REPO / "benchmarks" / "protocol.sh"), "agnews_lstm", str(tmp_path)],
                              env={**env, **more}, capture_output=True, text=True, timeout=1200)

    first = protocol()
    assert first.returncode == 0, first.stderr[-3000:]
    cell = tmp_path / "agnews_lstm"
    for method, own in (("bp", "model.dropout"), ("scpl", "method.temperature")):
        prov = read_provenance(cell / "tune" / f"{method}.yaml")
        assert prov["space"]["train.lr"] == "log:0.0001:0.03" and set(prov["space"]) == {"train.lr",
                                                                                          "train.weight_decay", own}
        cfg = yaml.safe_load((cell / "tune" / f"{method}.yaml").read_text())
        recipe = load_config(REPO / "recipes" / "agnews_lstm.yaml")  # fixed at the recipe's chosen values
        assert (cfg["model"]["lstm_pooling"], cfg["method"]["projection"]) == (recipe.model.lstm_pooling,
                                                                               recipe.method.projection)
        assert (cfg["train"]["epochs"], cfg["train"]["early_stopping_patience"]) == (2, 1)
        for seed in (10, 11):
            results = json.loads((cell / "seeds" / method / f"{method}-seed{seed}" / "results.json").read_text())
            assert results["seed"] == seed and results["code_version"]["id"] and results["data_fingerprint"]
    assert (cell / "report" / "report.md").is_file()

    path = cell / "seeds" / "bp" / "bp-seed10" / "results.json"
    results = json.loads(path.read_text())
    results["code_version"]["id"] = "git:0123456789abcdef"
    path.write_text(json.dumps(results))
    refused = protocol()
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and refused.stderr.strip().splitlines()[-1] == errors[0]  # one line, and the last
    assert "bp-seed10 was made by other code" in refused.stderr and "--reuse-other-versions" in refused.stderr
    assert protocol(REUSE_OTHER_VERSIONS="1").returncode == 0
    assert json.loads(path.read_text())["code_version"]["id"] == "git:0123456789abcdef"  # kept, not retrained


@pytest.mark.parametrize("cell", ["debian_transformer", "debian_lstm", "agnews_transformer", "agnews_lstm", "minilm"])
def test_step_overhead_cells_are_the_protocol_cells(cell):
    step_overhead = script("step_overhead")
    recipe, overrides = step_overhead.cell_overrides(cell, Path("../shared"), 32)
    for method in step_overhead.METHODS:
        cfg = load_config(recipe, [*overrides, f"method.name={method}"])
        assert cfg.method.name == method and cfg.data.max_train_samples == 2000
        if cell == "minilm":
            continue
        # the protocol's small-CPU model and the recipe's method settings (benchmarks/protocol.sh)
        assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.train.batch_size) == (64, 3, 128)
        assert cfg.model.encoder == cell.split("_")[1]
        assert (cfg.data.name == "custom") == cell.startswith("debian")
        if cell.endswith("transformer"):
            assert (cfg.model.norm, cfg.method.projection, cfg.model.num_heads) == ("pre", "mlp_bn", 4)
        else:
            shipped = load_config(REPO / "recipes" / "agnews_lstm.yaml")  # the recipe's chosen values, as the protocol's
            assert (cfg.model.lstm_pooling, cfg.method.projection) == (shipped.model.lstm_pooling, shipped.method.projection)
    with pytest.raises(SystemExit, match="unknown cell"):
        step_overhead.cell_overrides("gru", Path("../shared"), 32)


def test_reverdict_rereads_old_tables_by_the_t_test_rule(tmp_path):
    from scipy.stats import ttest_1samp

    reverdict = script("reverdict")
    old = lambda label, diffs, verdict: {"label": label, "vs_bp": {  # noqa: E731 - a row as old reports wrote it
        "seeds": [0, 1, 2], "test_accuracy_diff": diffs, "interval": [-1.85, -0.11], "verdict": verdict}}
    table = {"rows": [{"label": "BP", "vs_bp": None}, old("DeInfoReg", [-0.77, -0.58, -1.62], "lower"),
                      old("SCPL", [6.05, 5.56, 5.47], "higher")]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"note": "two tables in one file", "a": table, "b": {"rows": table["rows"][:2]}}))
    out = tmp_path / "re.json"
    assert reverdict.main([str(path), "--out", str(out)]) == 0
    tables = json.loads(out.read_text())["tables"]
    a, b = tables[f"{path}:a"], tables[f"{path}:b"]
    # the bootstrap's "lower" is a 3-seed artefact: the 95% t interval is [-2.36, +0.39]
    assert a[0]["test"]["t_ci95"] == pytest.approx([-2.36, 0.39], abs=0.01) and a[0]["verdict"] == "inconclusive"
    assert a[0]["old_verdict"] == "lower" and a[1]["verdict"] == "higher"
    raw = [ttest_1samp(d, 0).pvalue for d in ([-0.77, -0.58, -1.62], [6.05, 5.56, 5.47])]
    assert a[1]["test"]["p_difference_holm"] == pytest.approx(2 * min(raw))  # Holm over the table's two
    assert b[0]["test"]["p_difference_holm"] == pytest.approx(raw[0])  # each table its own family


def test_sensitivity_panels_take_runs_one_setting_from_the_recipe(tmp_path):
    plot = script("plot_sensitivity")
    recipe = "recipes/agnews_transformer.yaml"
    row = lambda method, fixed, vary, value, acc: {  # noqa: E731 - one sensitivity.py row
        "cell": "debian", "method": method, "recipe": recipe, "fixed": fixed, "vary": vary, "value": value,
        "best_val_acc": acc}
    old = {"a": row("scpl", ["model.norm=pre"], "train.lr", "1e-2", 0.65),  # the recipe's own run, named
           "b": row("scpl", [], "train.lr", "3e-3", 0.50)}  # unnamed: post-norm then, two settings off
    new = {"c": row("scpl", [], "method.temperature", "0.5", 0.60),
           "d": row("scpl", ["train.lr=3e-3"], "method.temperature", "0.2", 0.40),  # lr and τ off: no panel
           "e": row("bp", [], "train.lr", "3e-3", 0.70),
           "f": row("scpl", [], "train.epochs", "20", 0.99)}  # the epoch budget has its own plot
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    rows = plot.read_runs([f"{tmp_path / 'old.json'}@model.norm=post", str(tmp_path / "new.json")])
    values = plot.recipe_values(["model.norm=pre", "method.temperature=0.1", "scpl:train.lr=1e-2", "bp:train.lr=3e-3"])
    got = plot.points(rows, recipe, ["train.lr", "method.temperature"], values)
    assert got[("train.lr", "debian")] == {"scpl": {0.01: [65.0]}, "bp": {0.003: [70.0]}}
    assert got[("method.temperature", "debian")] == {"scpl": {0.1: [65.0], 0.5: [60.0]}, "bp": {0.1: [70.0]}}
    png = tmp_path / "s.png"
    assert plot.main([str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--recipe-value", "scpl:train.lr=1e-2",
                      "--png", str(png)]) == 0 and png.stat().st_size > 0


def test_time_to_bps_best_bounds_the_ratio_where_a_bp_seed_never_gets_there(tmp_path, monkeypatch):
    def run(method, seed, accuracies):  # one epoch of 10 s each
        folder = tmp_path / f"{method}-seed{seed}"
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "epoch_time_s": 10.0,
                                                                  "validation": {"accuracy": a}}) + "\n"
                                                      for e, a in enumerate(accuracies, 1)))
        (folder / "results.json").write_text(json.dumps({"encoder": "lstm", "method": method, "seed": seed}))
        return str(folder)

    runs = [run("bp", 0, [0.5, 0.8]), run("bp", 1, [0.5, 0.6]), run("scpl", 0, [0.7, 0.7]), run("scpl", 1, [0.75, 0.5])]
    out = tmp_path / "tta.json"
    monkeypatch.setattr(sys, "argv", ["tta", *runs, "--of-best", "bp", "0.99", "--out", str(out), "--png",
                                      str(tmp_path / "tta.png")])
    script("time_to_accuracy").main()
    rows = {r["method"]: r["of_best"] for r in json.loads(out.read_text())["summary"]}
    assert rows["bp"]["seed_times_s"] == [20.0, None] and rows["bp"]["mean_s"] is None  # target 0.99 x 0.7
    assert rows["bp"]["mean_s_at_least"] == 20.0  # the seed that never got there: its whole 20 s, at least
    assert rows["scpl"]["mean_s"] == 10.0 and rows["scpl"]["ratio_to_bp"] is None
    assert rows["scpl"]["ratio_to_bp_at_most"] == 0.5


def test_protocol_archive_keeps_records_and_studies_and_drops_weights_and_runs_in_progress(tmp_path):
    import sqlite3

    archive = script("protocol_archive")
    root = tmp_path / "root" / "cell"
    files = {
        "tune/bp.yaml": "x", "tune/tune.lock": "",
        "tune/bp/trial000-seed100/metrics.jsonl": "{}", "tune/bp/trial000-seed100/best/model.safetensors": "w",
        "tune/bp/trial001-seed100/metrics.jsonl": "{}", "tune/bp/trial001-seed100/checkpoints/step_1/state": "w",
        "seeds/bp/bp-seed10/results.json": "{}", "seeds/bp/bp-seed10/test_predictions.json": "{}",
        "seeds/bp/bp-seed10/checkpoints/step_9/model.safetensors": "w", "seeds/bp/bp-seed10/tokenizer/vocab.txt": "v",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    with sqlite3.connect(root / "tune/study.db") as db:
        db.execute("create table trials (number int)")
        db.execute("insert into trials values (7)")
    (tmp_path / "archive/cell/tune/old").mkdir(parents=True)  # a previous save: replaced, its README kept
    (tmp_path / "archive/README.md").write_text("how to go on")
    (tmp_path / "archive/notes.txt").write_text("stale")
    written = archive.save(tmp_path / "root", tmp_path / "archive")
    assert (tmp_path / "archive/README.md").read_text() == "how to go on"
    assert not (tmp_path / "archive/notes.txt").exists() and not (tmp_path / "archive/cell/tune/old").exists()
    got = sorted(str(p.relative_to(tmp_path / "archive" / "cell")) for p in written)
    assert got == ["seeds/bp/bp-seed10/results.json", "seeds/bp/bp-seed10/test_predictions.json", "tune/bp.yaml",
                   "tune/bp/trial000-seed100/metrics.jsonl", "tune/study.db"]
    with sqlite3.connect(tmp_path / "archive/cell/tune/study.db") as db:
        assert db.execute("select number from trials").fetchall() == [(7,)]
    archive.restore(tmp_path / "archive", tmp_path / "again")
    assert (tmp_path / "again/cell/tune/bp/trial000-seed100/metrics.jsonl").read_text() == "{}"
