"""Optional dependencies: a command whose extra is missing says which one to install, in one line, exit 2;
the core commands run without any extra."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

RECIPE = str(REPO / "recipes" / "quickstart.yaml")


def one_line_error(capsys, main, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    return err


def test_tune_without_optuna_names_the_tune_extra(monkeypatch, tmp_path, capsys):
    from nlp_decouple.cli.tune import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    err = one_line_error(capsys, main, [RECIPE, "methods=bp", "trials=1", "--out", str(tmp_path)])
    assert 'pip install "nlp_decouple[tune]"' in err and "optuna" in err
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("missing", ["matplotlib", "scipy"])
def test_report_and_compare_without_their_libraries_name_the_report_extra(missing, monkeypatch, tmp_path, capsys):
    from nlp_decouple.cli.compare import main as compare
    from nlp_decouple.cli.report import main as report

    monkeypatch.setitem(sys.modules, missing, None)
    err = one_line_error(capsys, report, [str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    assert 'pip install "nlp_decouple[report]"' in err and missing in err
    err = one_line_error(capsys, compare, [RECIPE, "methods=bp", "seeds=0", "--out", str(tmp_path / "sweep")])
    assert 'pip install "nlp_decouple[report]"' in err
    assert not (tmp_path / "sweep").exists()  # refused before any run trained


def test_tensorboard_logging_without_tensorboard_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    from nlp_decouple.config import load_config
    from nlp_decouple.errors import UserError
    from nlp_decouple.trainer import Trainer

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboardX" else find_spec(name, *a))
    cfg = load_config(RECIPE, ["train.log_with=tensorboard", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match=r'pip install "nlp_decouple\[tensorboard\]"'):
        Trainer(cfg)


def test_train_evaluate_and_predict_run_without_any_extra(tmp_path):
    """A fresh interpreter where the extras' libraries cannot be imported trains, evaluates and predicts."""
    code = f"""
import sys
for name in ("optuna", "matplotlib", "tensorboard", "tensorboardX"):
    sys.modules[name] = None  # import raises ImportError, as if not installed
from nlp_decouple.cli import evaluate, predict, train
run = "{tmp_path / 'core'}"
assert train.main([{RECIPE!r}, "train.epochs=1", "data.synthetic_train_size=200", "data.synthetic_test_size=50",
                   "model.hidden_size=8", "eval.probe_samples=50", "train.progress=false",
                   "output_dir={tmp_path}", "run_name=core"]) == 0
assert evaluate.main([run, "--device", "cpu"]) == 0
assert predict.main([run, "the team won", "--device", "cpu"]) == 0
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
