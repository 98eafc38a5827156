"""Non-finite losses: detected per stage, the update skipped and counted, the run stopped after too many."""
from __future__ import annotations

import pytest
import torch

from nlp_decouple.config import load_config
from nlp_decouple.trainer import NonFiniteLoss, Trainer

TINY = ["train.progress=false", "model.encoder=lstm", "model.hidden_size=16", "model.num_layers=2",
        "data.synthetic_train_size=200", "data.synthetic_test_size=50", "train.batch_size=32",
        "eval.probe_samples=50", "method.name=scpl"]


def _poison(trainer: Trainer, stage: int, steps: set[int]):
    """Make ``stage``'s loss NaN on the given call counts."""
    head = trainer.model.stages[stage].head
    original, calls = head.forward, {"n": 0}

    def forward(pooled, labels):
        out = original(pooled, labels)
        calls["n"] += 1
        if labels is not None and calls["n"] in steps:
            out.loss = out.loss * torch.tensor(float("nan"))
        return out

    head.forward = forward


def test_nan_in_one_stage_skips_only_that_update(tmp_path):
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*TINY, f"output_dir={tmp_path}", "train.max_steps=1"]))
    _poison(trainer, 1, {1})
    before = [{n: p.detach().clone() for n, p in s.named_parameters()} for s in trainer.model.stages]
    batch = next(iter(trainer.loaders.train))
    stage_losses = trainer.engine.step(batch)
    assert stage_losses.isnan().tolist() == [k == 1 for k in range(len(trainer.model.stages))]
    for k, stage in enumerate(trainer.model.stages):
        changed = any(not torch.equal(p, before[k][n]) for n, p in stage.named_parameters())
        assert changed == (k != 1), f"stage {k}"


def test_isolated_nan_is_counted_and_training_goes_on(tmp_path):
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*TINY, f"output_dir={tmp_path}", "train.epochs=1"]))
    _poison(trainer, 0, {2, 4})
    results = trainer.fit()
    assert results["nonfinite_steps"] == 2


def test_nan_in_a_row_stops_with_a_clear_message(tmp_path):
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*TINY, f"output_dir={tmp_path}", "train.max_nonfinite=3"]))
    _poison(trainer, 2, set(range(1, 100)))
    with pytest.raises(NonFiniteLoss, match=r"stage\(s\) \[2\] for 3 steps in a row.*train.lr"):
        trainer.fit()


def test_a_streak_over_a_chunk_end_stops_at_the_step_it_reached_the_limit(tmp_path):
    """The losses are read once per chunk of steps: a streak running over a chunk's end still stops the run
    at the step where it reached train.max_nonfinite, before any checkpoint or evaluation."""
    trainer = Trainer(load_config("recipes/quickstart.yaml", [*TINY, f"output_dir={tmp_path}", "train.max_nonfinite=3"]))
    trainer.engine.chunk = 2
    _poison(trainer, 1, {2, 3, 4})
    with pytest.raises(NonFiniteLoss, match=r"stage\(s\) \[1\] for 3 steps in a row \(step 4\)"):
        trainer.fit()
