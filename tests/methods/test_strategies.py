"""method.backward=per_group (an optimizer step per stage as soon as its loss exists) and =sum (one
backward of the summed local losses, one optimizer) must train decoupled models to the same weights."""
from __future__ import annotations

import pytest
import torch

from nlp_decouple.config import load_config
from nlp_decouple.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4


def small(tmp_path, method: str, backward: str, *extra: str) -> list[str]:
    return [f"output_dir={tmp_path}", f"run_name={method}-{backward}", "train.progress=false",
            "data.name=synthetic", "tokenizer.train=word", "tokenizer.vocab_size=200",
            "data.synthetic_train_size=300", "data.synthetic_test_size=40", "model.hidden_size=16",
            "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2", "train.batch_size=16",
            "train.lr=5e-3", "train.seed=3", f"method.name={method}", f"method.backward={backward}", *extra]


def train_steps(overrides: list[str]) -> tuple[Trainer, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Build a Trainer and run STEPS steps right away (global RNG as the trainer's seed left it)."""
    trainer = Trainer(load_config(None, overrides))
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.model.train()
    batches = iter(trainer.loaders.train)
    for _ in range(STEPS):
        values = trainer.engine.step(next(batches))
        assert len(values) == len(trainer.model.stages) and all(v == v for v in values)
    return trainer, initial, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


CASES = {
    "scpl": ("scpl", "model.dropout=0"),
    "early_exit": ("early_exit", "model.dropout=0"),
    "deinforeg": ("deinforeg", "model.dropout=0"),
    # dropout draws from the global RNG only in forwards, which run in the same order either way
    "scpl_dropout": ("scpl", "model.dropout=0.2"),
    "scpl_learned_temperature": ("scpl", "model.dropout=0", "method.learn_temperature=true"),
    "scpl_exit_all_groups": ("scpl", "model.dropout=0", "method.exit_input=all_groups", "train.group_lr_scale=1,2,3"),
    "scpl_lstm": ("scpl", "model.encoder=lstm", "model.dropout=0"),
    "scpl_lstm_handoff": ("scpl", "model.encoder=lstm", "model.lstm_state_handoff=true", "model.dropout=0"),
    "early_exit_lstm": ("early_exit", "model.encoder=lstm", "model.dropout=0"),
    # clipping is per stage in both strategies; a warm-up schedule per optimizer
    "deinforeg_clip_schedule": ("deinforeg", "model.dropout=0", "train.grad_clip=0.05", "train.scheduler=linear",
                                "train.warmup_ratio=0.5", "train.max_steps=8", "model.groups=[2,1]",
                                "method.projection=mlp"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_group_and_sum_reach_identical_weights(tmp_path, case):
    method, *extra = CASES[case]
    per_group, init_a, after_a = train_steps(small(tmp_path, method, "per_group", *extra))
    summed, init_b, after_b = train_steps(small(tmp_path, method, "sum", *extra))
    n = len(per_group.model.stages)
    assert n >= 2 and per_group.engine.per_group and not summed.engine.per_group
    for trainer in (per_group, summed):  # one optimizer over every stage, a parameter group per stage
        (optimizer,) = trainer.optimization.optimizers
        assert [g["stage"] for g in optimizer.param_groups] == list(range(n))
    for name in init_a:  # same seed, same starting point
        torch.testing.assert_close(init_a[name], init_b[name], rtol=0, atol=0)
    moved = [name for name in init_a if not torch.equal(init_a[name], after_a[name])]
    for k, stage in enumerate(per_group.model.stages):  # every stage was trained
        prefix = f"stages.{k}."
        assert any(name.startswith(prefix) for name in moved), f"stage {k} did not move"
    for name in after_a:
        torch.testing.assert_close(after_a[name], after_b[name], rtol=1e-6, atol=1e-7, msg=name)


def test_bp_is_one_optimizer_over_everything(tmp_path):
    trainer, init, after = train_steps(small(tmp_path, "bp", "per_group", "model.dropout=0"))
    assert not trainer.engine.per_group and len(trainer.optimization.optimizers) == 1 and len(trainer.model.stages) == 1
    assert not torch.equal(init["stages.0.groups.0.blocks.0.embed.weight"],
                           after["stages.0.groups.0.blocks.0.embed.weight"])


def test_per_group_differs_from_not_cutting(tmp_path):
    """Sanity check that the comparison above can fail: training the same stages without the cuts
    (gradients crossing groups) leads elsewhere."""
    _, _, cut = train_steps(small(tmp_path, "early_exit", "sum", "model.dropout=0"))
    trainer = Trainer(load_config(None, small(tmp_path, "early_exit", "sum", "model.dropout=0")))
    trainer.model.decoupled = False  # no detach between stages: later losses reach earlier groups
    trainer.model.train()
    batches = iter(trainer.loaders.train)
    for _ in range(STEPS):
        trainer.engine.step(next(batches))
    uncut = {n: p.detach() for n, p in trainer.model.named_parameters()}
    assert not torch.allclose(cut["stages.0.groups.0.blocks.0.embed.weight"],
                              uncut["stages.0.groups.0.blocks.0.embed.weight"], atol=1e-6)


def test_frozen_embedding_stage_is_skipped_identically(tmp_path):
    """With the embedding frozen, SCPL's first stage has nothing to train: both strategies leave it
    untouched and still agree on everything else."""
    extra = ("model.dropout=0", "model.freeze_embeddings=true")
    per_group, init_a, after_a = train_steps(small(tmp_path, "scpl", "per_group", *extra))
    _, _, after_b = train_steps(small(tmp_path, "scpl", "sum", *extra))
    assert sorted(per_group.optimization.optimizer_of) == list(range(1, len(per_group.model.stages)))
    name = "stages.0.groups.0.blocks.0.embed.weight"
    torch.testing.assert_close(after_a[name], init_a[name], rtol=0, atol=0)
    assert not torch.equal(after_a["stages.1.groups.0.blocks.0.layer.linear1.weight"],
                           init_a["stages.1.groups.0.blocks.0.layer.linear1.weight"])
    for key in after_a:
        torch.testing.assert_close(after_a[key], after_b[key], rtol=1e-6, atol=1e-7, msg=key)


def test_learned_temperature_trains_in_every_group(tmp_path):
    _, before, after = train_steps(small(tmp_path, "scpl", "per_group", "model.dropout=0",
                                         "method.learn_temperature=true"))
    taus = [n for n in after if n.endswith("log_temperature")]
    assert len(taus) == 3  # embedding + 2 blocks: one SupCon each
    assert all(not torch.equal(before[n], after[n]) for n in taus)
