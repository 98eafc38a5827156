"""The trainer with train.pipeline=true ends exactly where the sequential per-group trainer ends."""
from __future__ import annotations

import shutil
import time

import pytest
import torch

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.trainer import Trainer

BASE = ["train.progress=false", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
        "model.num_layers=2", "model.dropout=0", "data.synthetic_train_size=300", "data.synthetic_test_size=50",
        "train.batch_size=32", "train.epochs=2", "eval.probe_samples=50", "train.save_every=3"]


def _fit(tmp_path, name, *extra):
    cfg = load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={tmp_path}", f"run_name={name}", *extra])
    trainer = Trainer(cfg)
    results = trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, results


@pytest.mark.parametrize("method", ["scpl", "early_exit", "deinforeg", "al"])
@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_pipelined_training_equals_sequential(tmp_path, method, encoder):
    torch.set_num_threads(1)
    common = [f"method.name={method}", f"model.encoder={encoder}"]
    seq_w, seq_r = _fit(tmp_path, "seq", *common)
    # 3 stages; the LSTM runs on 2 listed CPUs, so stages 0 and 1 share a worker thread
    devices = "train.devices=[cpu,cpu]" if encoder == "lstm" else "train.devices=[cpu,cpu,cpu]"
    pipe_w, pipe_r = _fit(tmp_path, "pipe", *common, "train.pipeline=true", devices)
    for key in seq_w:
        assert torch.equal(seq_w[key], pipe_w[key]), key
    assert pipe_r["steps"] == seq_r["steps"]
    assert pipe_r["test_accuracy"] == seq_r["test_accuracy"]


def test_a_worker_per_listed_device(tmp_path):
    cfg = load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={tmp_path}", "method.name=scpl",
                                                  "model.num_layers=3", "train.pipeline=true", "train.devices=[cpu,cpu]"])
    assert Trainer(cfg).engine.workers == [[0, 1], [2, 3]]  # 4 stages, 2 threads


@pytest.mark.parametrize("pipeline", ["true", "threads", "processes"])
def test_a_stage_pipeline_refuses_bp_and_names_torch_pipelining(pipeline):
    with pytest.raises(UserError) as info:
        load_config("recipes/quickstart.yaml", [f"train.pipeline={pipeline}", "method.name=bp"])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"train.pipeline={pipeline} needs a decoupled method")
    assert "train.pipeline=torch_gpipe or torch_1f1b" in message


def test_pipeline_rejects_summed_backward():
    with pytest.raises(UserError, match="per_group"):
        load_config("recipes/quickstart.yaml", ["train.pipeline=true", "method.name=scpl", "method.backward=sum"])


def test_a_checkpoint_waits_for_a_slow_stage_update(tmp_path):
    """Stage 0 hands its carry on before its own (here slowed) update: the checkpoint after a chunk must
    still hold that update, so resuming from it ends bit-identical to the uninterrupted run."""
    torch.set_num_threads(1)
    common = ["method.name=scpl", "model.encoder=lstm", "train.pipeline=true", "train.devices=[cpu,cpu]",
              "train.save_every=2", "train.keep_checkpoints=10", "train.epochs=1", "train.max_steps=6",
              "eval.every_group=false"]
    cfg = load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={tmp_path}", "run_name=full", *common])
    trainer = Trainer(cfg)
    update = trainer.optimization.backward_and_step

    def slow_stage0(index, loss):
        if index == 0:
            trainer.optimization.accelerator.backward(loss)
            time.sleep(0.3)  # the next stages finish the chunk meanwhile
            trainer.optimization.step(index)
            return
        update(index, loss)

    trainer.optimization.backward_and_step = slow_stage0
    trainer.fit()
    full = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", resumed_dir / "step_00000002")
    cfg = load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={tmp_path}", "run_name=resumed", *common,
                                                  "train.resume=auto"])
    resumed = Trainer(cfg)
    resumed.fit()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, full[key]), key


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change once set, and has no
    public way to reset it (the package never does: its runs in one process share their precision). A
    test that needs another precision inside the pytest process resets it before and after, privately."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_thread_pipeline_runs_under_bf16_autocast(tmp_path, fresh_accelerator_state):
    cfg = load_config("recipes/quickstart.yaml", [*BASE, f"output_dir={tmp_path}", "method.name=scpl", "train.pipeline=true",
                                                  "train.devices=[cpu,cpu]", "train.mixed_precision=bf16",
                                                  "train.cpu=true"])
    trainer = Trainer(cfg)
    seen = []
    exit_linear = next(m for m in trainer.model.stages[-1].head.modules() if isinstance(m, torch.nn.Linear))
    exit_linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    stage_losses = [losses for _, losses in trainer.engine.run(iter(trainer.loaders.train), 2, 0)]
    assert len(stage_losses) == 2 and seen and set(seen) == {torch.bfloat16}
