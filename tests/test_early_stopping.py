"""train.early_stopping_patience: stop after that many epochs without a validation gain, keep the best
model, record the stop, and decide after a resume exactly as without one."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from nlp_decouple import trainer as trainer_module
from nlp_decouple.config import load_config
from nlp_decouple.trainer import Trainer

TINY = ["train.progress=false", "model.hidden_size=16", "model.num_layers=2", "train.batch_size=32",
        "data.synthetic_train_size=240", "data.synthetic_test_size=60", "tokenizer.vocab_size=200",
        "eval.probe_samples=60", "eval.every_group=false", "train.deterministic=true", "run_name=run"]


def _cfg(out, *extra):
    return load_config(REPO / "recipes" / "quickstart.yaml", [*TINY, f"output_dir={out}", *extra])


def _fit(cfg, on_epoch=None) -> dict:
    return Trainer(cfg).fit(on_epoch=on_epoch)  # runs in one process share Accelerate's state, as tune's trials do


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation accuracy by epoch from a list (the real evaluation still runs, test scores included)."""
    accuracies, epoch = [], [0]
    end_epoch, evaluate = Trainer._end_epoch, trainer_module.evaluate

    def tracking(self, state, *args, **kwargs):
        epoch[0] = state.epoch
        return end_epoch(self, state, *args, **kwargs)

    def scripted(*args, **kwargs):
        scores, outs = evaluate(*args, **kwargs)
        scores["validation"] = {**scores["validation"], "accuracy": accuracies[epoch[0] - 1]}
        return scores, outs

    monkeypatch.setattr(Trainer, "_end_epoch", tracking)
    monkeypatch.setattr(trainer_module, "evaluate", scripted)
    return accuracies


# best at epoch 4; 0.70 at epoch 6 ties it, which is no gain: with patience 2 the run stops after epoch 6
SCRIPT = [0.50, 0.60, 0.60, 0.70, 0.65, 0.70, 0.69, 0.90]


def test_stops_after_patience_epochs_without_a_gain_and_keeps_the_best_epoch(tmp_path, scripted_validation,
                                                                             one_thread):
    scripted_validation += SCRIPT
    results = _fit(_cfg(tmp_path, "train.epochs=8", "train.early_stopping_patience=2"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["validation"]["accuracy"] for r in rows] == SCRIPT[:6]
    assert results["epochs_run"] == 6 and results["stopped_early_at_epoch"] == 6
    assert results["best_epoch"] == 4 and results["validation_accuracy"] == 0.70
    assert results["test_accuracy"] == rows[3]["test"]["accuracy"]  # the best epoch's model is the one reported
    assert json.loads((tmp_path / "run" / "test_predictions.json").read_text())["epoch"] == 4


def test_a_run_that_keeps_improving_or_has_no_patience_runs_every_epoch(tmp_path, scripted_validation, one_thread):
    scripted_validation += [0.5, 0.6, 0.7]
    improving = _fit(_cfg(tmp_path / "a", "train.epochs=3", "train.early_stopping_patience=1"))
    assert improving["epochs_run"] == 3 and improving["stopped_early_at_epoch"] is None
    scripted_validation[:] = [0.5, 0.5, 0.5]
    off = _fit(_cfg(tmp_path / "b", "train.epochs=3"))
    assert off["epochs_run"] == 3 and off["stopped_early_at_epoch"] is None


def test_a_real_plateau_stops_the_run(tmp_path, one_thread):
    """A learning rate too small to move the weights: validation accuracy never improves on epoch 1."""
    results = _fit(_cfg(tmp_path, "train.epochs=10", "train.early_stopping_patience=2", "train.lr=1e-9"))
    assert (results["best_epoch"], results["epochs_run"], results["stopped_early_at_epoch"]) == (1, 3, 3)


class Killed(Exception):
    pass


def test_a_run_interrupted_inside_its_patience_stops_where_an_uninterrupted_one_does(tmp_path, scripted_validation,
                                                                                    one_thread):
    scripted_validation += SCRIPT
    settings = ["train.epochs=8", "train.early_stopping_patience=2"]
    reference = _fit(_cfg(tmp_path / "uninterrupted", *settings))

    def kill_in_epoch_6(row):  # after epoch 6's evaluation, before its checkpoint: the run resumes from the
        if row["epoch"] == 6:  # end of epoch 5, one epoch without a gain already counted
            raise Killed

    with pytest.raises(Killed):
        _fit(_cfg(tmp_path / "interrupted", *settings, "train.resume=auto"), on_epoch=kill_in_epoch_6)
    resumed = _fit(_cfg(tmp_path / "interrupted", *settings, "train.resume=auto"))

    def rows(out):
        lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]

    assert rows(tmp_path / "interrupted") == rows(tmp_path / "uninterrupted")
    for key in ("epochs_run", "stopped_early_at_epoch", "best_epoch", "test_accuracy", "steps", "confusion_matrix"):
        assert resumed[key] == reference[key], key
    for tag in ("best", "last"):
        ref = load_file(str(tmp_path / "uninterrupted" / "run" / tag / "model.safetensors"))
        new = load_file(str(tmp_path / "interrupted" / "run" / tag / "model.safetensors"))
        assert all(torch.equal(ref[k], new[k]) for k in ref), tag
