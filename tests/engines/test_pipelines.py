"""The pipeline runner: same (stage, batch) updates in the same order as the sequential per-group run,
so identical weights; clean failure; placement helpers; inference across placed stages."""
from __future__ import annotations

import copy
import math
import threading
import time

import pytest
import torch
from torch import nn

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.classifier import StagedClassifier
from nlp_decouple.engines import PipelineError, ThreadedPipeline, assign_devices, assign_workers, place_stages
from nlp_decouple.engines.placement import _spread

VOCAB, PAD, CLASSES, MAXLEN = 40, 0, 4, 12
CPU = torch.device("cpu")


# equal intra-op thread counts on both sides of a comparison (float sums may depend on them)
pytestmark = pytest.mark.usefixtures("one_thread")


def build(method: str, encoder: str, *extra: str) -> StagedClassifier:
    cfg = load_config(None, ["model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2",
                             "model.dropout=0", f"model.encoder={encoder}", f"method.name={method}", *extra])
    torch.manual_seed(0)
    return StagedClassifier.from_config(cfg, VOCAB, PAD, CLASSES, MAXLEN)


def make_batches(n: int = 6, b: int = 8, t: int = MAXLEN, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (b, t), generator=g)
        lengths = torch.randint(2, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        labels = torch.arange(b) % CLASSES  # every class present: SupCon has positives
        out.append({"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask,
                    "labels": labels[torch.randperm(b, generator=g)]})
    return out


def optimizers(model: StagedClassifier) -> list[torch.optim.Optimizer]:
    return [torch.optim.AdamW(stage.parameters(), lr=1e-2) for stage in model.stages]


def make_update(model: StagedClassifier, opts: list[torch.optim.Optimizer], log: list | None = None):
    def update(k: int, loss: torch.Tensor) -> None:  # Trainer._update without Accelerate
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.stages[k].parameters(), 1.0)
        opts[k].step()
        opts[k].zero_grad(set_to_none=True)
        if log is not None:
            log.append(k)
    return update


def sequential(model: StagedClassifier, batches: list[dict]) -> list[list[float]]:
    """Trainer.train_step with method.backward=per_group (one stage after the other)."""
    opts, stage_losses = optimizers(model), []
    update = make_update(model, opts)
    for batch in batches:
        row = []
        for k, out in enumerate(model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"])):
            v = float(out.loss.detach())
            row.append(v if math.isfinite(v) else math.nan)
            if math.isfinite(v):
                update(k, out.loss)
        stage_losses.append(row)
    return stage_losses


def pipelined(model: StagedClassifier, batches, **kwargs) -> list[list[float]]:
    opts = optimizers(model)
    kwargs.setdefault("threads_per_stage", 1)
    with ThreadedPipeline(list(model.stages), [CPU] * len(model.stages), make_update(model, opts),
                        decoupled=model.decoupled, **kwargs) as runner:
        return stage_losses_of(runner.run(batches))


def stage_losses_of(steps) -> list[list[float]]:
    """The stage losses of an engine run's ``(batch, stage_losses)`` steps."""
    return [losses for _, losses in steps]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


CASES = {
    "scpl-transformer": ("scpl", "transformer"),
    "scpl-lstm": ("scpl", "lstm"),
    "scpl-lstm-handoff": ("scpl", "lstm", "model.lstm_state_handoff=true"),
    "early_exit-transformer": ("early_exit", "transformer"),
    "early_exit-lstm": ("early_exit", "lstm"),
    "deinforeg-transformer": ("deinforeg", "transformer", "method.projection=mlp"),
    "deinforeg-lstm": ("deinforeg", "lstm"),
    "al-lstm": ("al", "lstm"),  # the label side travels in carry.extras
    "scpl-groups": ("scpl", "transformer", "model.groups=[2,1]"),
    "scpl-exit-all-groups": ("scpl", "lstm", "method.exit_input=all_groups"),  # features travel in carry.extras
    "bp-lstm": ("bp", "lstm"),  # one stage: the runner still works
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipelined_equals_sequential(case):
    method, encoder, *extra = CASES[case]
    reference = build(method, encoder, *extra)
    model = copy.deepcopy(reference)
    initial = copy.deepcopy(reference)
    batches = make_batches()
    expected = sequential(reference, batches)
    got = pipelined(model, batches)
    assert got == expected  # every stage's loss, per batch, in batch order
    assert len(got) == len(batches) and all(len(row) == len(model.stages) for row in got)
    assert_same_weights(model, reference)
    for k, (stage, start) in enumerate(zip(model.stages, initial.stages)):  # every stage trained
        assert any(not torch.equal(p, q) for p, q in zip(stage.parameters(), start.parameters())), k


@pytest.mark.parametrize("workers", [[[0, 1], [2]], [[0], [1, 2]], [[0, 1, 2]]])
@pytest.mark.parametrize("case", ["scpl-lstm", "al-lstm", "deinforeg-transformer"])
def test_stages_sharing_a_worker_train_as_sequentially(case, workers):
    method, encoder, *extra = CASES[case]
    reference = build(method, encoder, *extra)
    model = copy.deepcopy(reference)
    batches = make_batches()
    expected = sequential(reference, batches)
    seen: dict[int, str] = {}
    step = make_update(model, optimizers(model))

    def update(k, loss):
        seen.setdefault(k, threading.current_thread().name)
        step(k, loss)

    with ThreadedPipeline(list(model.stages), [CPU] * 3, update, threads_per_stage=1, workers=workers) as runner:
        assert runner.threads == [1] * len(workers)
        got = stage_losses_of(runner.run(batches))
    assert got == expected
    assert_same_weights(model, reference)
    assert seen == {k: f"pipeline-worker{w}" for w, ks in enumerate(workers) for k in ks}


def test_assign_workers():
    assert assign_workers(["cpu", "cpu"], 5) == [[0, 1, 2], [3, 4]]  # the blocks assign_devices uses
    assert [assign_devices(["cpu", "cpu"], 5)[k] for k in (0, 4)] == [CPU, CPU]
    assert assign_workers(["cpu", "cpu", "cpu"], 4) == [[0, 1], [2], [3]]
    assert assign_workers(["cpu", "cpu"], 2) == [[0], [1]]
    assert assign_workers(["cpu"] * 4, 2) == [[0], [1]]
    assert assign_workers("cpu", 3) == [[0], [1], [2]]  # one device named: a worker per stage
    if not torch.cuda.is_available():
        assert assign_workers("auto", 3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="contiguous"):
        ThreadedPipeline(list(build("scpl", "lstm").stages), [CPU] * 3, lambda k, loss: None, workers=[[0, 2], [1]])
    with pytest.raises(ValueError, match="contiguous"):
        ThreadedPipeline(list(build("scpl", "lstm").stages), [CPU] * 3, lambda k, loss: None, workers=[[0, 1]])


def test_equal_with_two_threads_per_stage_and_queue_of_one():
    torch.set_num_threads(2)
    reference = build("scpl", "lstm", "model.groups=[1,2]")
    model = copy.deepcopy(reference)
    batches = make_batches(3)
    sequential(reference, batches)
    pipelined(model, batches, threads_per_stage=2, queue_size=1)
    assert_same_weights(model, reference)


class Spy(nn.Module):
    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage, self.seen = stage, []

    def forward(self, carry, labels=None, return_pooled=False):
        tensors = [carry.hidden, *(carry.state or ()), *carry.extras.values()]
        self.seen.append((threading.current_thread().name, any(t.requires_grad for t in tensors),
                          sorted(carry.extras), carry.state is not None))
        return self.stage(carry, labels, return_pooled)


def test_each_stage_gets_a_detached_carry_in_its_own_thread():
    model = build("al", "lstm", "model.lstm_state_handoff=true")
    stages = [model.stages[0], Spy(model.stages[1]), Spy(model.stages[2])]
    with ThreadedPipeline(stages, [CPU] * 3, make_update(model, optimizers(model)), threads_per_stage=1) as runner:
        stage_losses_of(runner.run(make_batches(2)))
    # stage 0 is the embedding block; stage 1's LSTM hands its final (h, c) to stage 2
    for k, has_state in ((1, False), (2, True)):
        assert stages[k].seen == [(f"pipeline-worker{k}", False, ["al_t"], has_state)] * 2


def test_a_different_order_gives_different_weights():
    """The comparison above can fail: the same batches in another order end elsewhere."""
    reference = build("early_exit", "transformer")
    model = copy.deepcopy(reference)
    batches = make_batches()
    sequential(reference, batches)
    pipelined(model, batches[::-1])
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_several_epochs_and_limit():
    """One runner, one run per epoch; ``limit`` stops exactly (train.max_steps)."""
    reference = build("scpl", "transformer")
    model = copy.deepcopy(reference)
    batches = make_batches(5)
    opts = optimizers(model)
    with ThreadedPipeline(list(model.stages), [CPU] * 3, make_update(model, opts), threads_per_stage=1) as r:
        assert len(stage_losses_of(r.run(batches))) == 5  # epoch 1
        assert len(stage_losses_of(r.run(iter(batches), limit=3))) == 3  # epoch 2, stopped by max_steps
        shared = iter(batches)  # chunks over one iterator (a checkpoint between them): no batch lost
        assert [len(stage_losses_of(r.run(shared, limit=2))) for _ in range(3)] == [2, 2, 1]
    sequential(reference, batches + batches[:3] + batches)
    assert_same_weights(model, reference)


def test_with_batch_and_an_exception_in_the_caller_loop():
    model = build("scpl", "lstm")
    batches = make_batches(10)
    with ThreadedPipeline(list(model.stages), [CPU] * 3, make_update(model, optimizers(model)),
                        threads_per_stage=1) as runner:
        seen = []
        with pytest.raises(KeyError):  # e.g. the trainer's NonFiniteLoss
            for batch, stage_losses in runner.run(batches):
                seen.append(batch)
                assert len(stage_losses) == 3
                if len(seen) == 3:
                    raise KeyError("caller gave up")
        assert all(a is b for a, b in zip(seen, batches[:3]))
        assert not alive_pipeline_threads()


def test_stages_overlap_and_keep_batch_order():
    """Stage 0 runs ahead while stage 1 is busy; each stage sees the batches in order."""
    model = build("early_exit", "lstm", "model.groups=[1,2]")
    opts, seen, ahead = optimizers(model), {0: [], 1: []}, []
    base = make_update(model, opts)

    def update(k, loss):
        base(k, loss)
        seen[k].append(len(seen[k]))
        if k == 1 and len(seen[1]) == 1:
            time.sleep(0.5)  # a slow stage 1 on batch 0
            ahead.append(len(seen[0]))  # batches stage 0 finished meanwhile

    with ThreadedPipeline(list(model.stages), [CPU, CPU], update, threads_per_stage=1, queue_size=2) as runner:
        rows = stage_losses_of(runner.run(make_batches(6)))
    assert len(rows) == 6 and seen == {0: list(range(6)), 1: list(range(6))}
    # sequentially stage 0 would have finished batch 0 only; a queue of 2 lets it finish 0, 1, 2
    # (batch 3 waits for room in the queue before its update)
    assert 2 <= ahead[0] <= 3


class Failing(nn.Module):
    """Wraps a stage; raises on a given batch (counted by calls)."""

    def __init__(self, stage: nn.Module, at: int):
        super().__init__()
        self.stage, self.at, self.calls = stage, at, 0

    def forward(self, *args):
        self.calls += 1
        if self.calls > self.at:
            raise ValueError("boom in the stage")
        return self.stage(*args)


def alive_pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pipeline-")]


@pytest.mark.parametrize("queue_size", [1, 2])
def test_exception_in_stage_1_surfaces_quickly(queue_size):
    model = build("scpl", "lstm")
    stages = list(model.stages)
    stages[1] = Failing(stages[1], at=2)
    opts = optimizers(model)
    runner = ThreadedPipeline(stages, [CPU] * 3, make_update(model, opts), threads_per_stage=1, queue_size=queue_size)
    start = time.monotonic()
    rows = []
    with pytest.raises(PipelineError, match=r"stage 1 .*ValueError: boom in the stage") as info:
        for _, row in runner.run(make_batches(50)):
            rows.append(row)
    assert time.monotonic() - start < 5
    assert info.value.stage == 1 and isinstance(info.value.__cause__, ValueError)
    assert len(rows) <= 2 and not alive_pipeline_threads()  # batches 0, 1 at most (batch 2 failed)
    # the runner is usable again after a failure
    stages[1].at = 10**9
    assert len(stage_losses_of(runner.run(make_batches(2)))) == 2
    runner.close()


def test_exception_in_update_and_in_input():
    model = build("early_exit", "transformer")

    def update(k, loss):
        if k == 2:
            raise RuntimeError("optimizer exploded")
        loss.backward()

    with ThreadedPipeline(list(model.stages), [CPU] * 3, update, threads_per_stage=1) as runner:
        with pytest.raises(PipelineError, match="stage 2") as info:
            stage_losses_of(runner.run(make_batches(20)))
        assert info.value.stage == 2

        def bad_batches():
            yield from make_batches(2)
            raise OSError("disk gone")

        with pytest.raises(PipelineError, match="input batches failed: OSError") as info:
            stage_losses_of(runner.run(bad_batches()))
        assert info.value.stage == -1
    assert not alive_pipeline_threads()


def test_caller_leaving_early_stops_the_threads():
    model = build("scpl", "transformer")
    with ThreadedPipeline(list(model.stages), [CPU] * 3, make_update(model, optimizers(model)),
                        threads_per_stage=1) as runner:
        for i, _ in enumerate(runner.run(make_batches(30))):
            if i == 1:
                break
        assert not alive_pipeline_threads()
        assert len(stage_losses_of(runner.run(make_batches(2)))) == 2  # a next run (epoch) starts cleanly


class NanAt(nn.Module):
    def __init__(self, stage: nn.Module, at: int):
        super().__init__()
        self.stage, self.at, self.calls = stage, at, 0

    def forward(self, carry, labels=None, return_pooled=False):
        out = self.stage(carry, labels, return_pooled)
        if self.calls == self.at:
            out.loss = out.loss * float("nan")
        self.calls += 1
        return out


def test_non_finite_loss_is_nan_and_skips_that_update():
    model = build("early_exit", "lstm")
    reference = copy.deepcopy(model)
    log: list[int] = []
    stages = list(model.stages)
    stages[0] = NanAt(stages[0], at=1)
    with ThreadedPipeline(stages, [CPU] * 3, make_update(model, optimizers(model), log), threads_per_stage=1) as r:
        rows = stage_losses_of(r.run(make_batches(4)))
    assert math.isnan(rows[1][0])
    assert all(math.isfinite(v) for i, row in enumerate(rows) for k, v in enumerate(row) if (i, k) != (1, 0))
    assert log.count(0) == 3 and log.count(1) == 4 and log.count(2) == 4
    # the sequential per-group run skips the same update (the later stages still train on that batch)
    reference.stages[0] = NanAt(reference.stages[0], at=1)
    expected = sequential(reference, make_batches(4))
    assert str(expected) == str(rows)
    assert_same_weights(model, reference)


def test_thread_budget_per_stage():
    torch.set_num_threads(2)
    model = build("early_exit", "transformer")
    seen: dict[int, int] = {}

    def update(k, loss):
        loss.backward()
        seen[k] = torch.get_num_threads()

    with ThreadedPipeline(list(model.stages), [CPU] * 3, update, threads_per_stage=[1, 2, 1]) as runner:
        stage_losses_of(runner.run(make_batches(2)))
    assert seen == {0: 1, 1: 2, 2: 1}
    assert torch.get_num_threads() == 2  # the caller's own count is untouched
    runner = ThreadedPipeline(list(model.stages), [CPU] * 3, update)  # default: 2 threads over 3 CPU stages
    assert runner.threads == [1, 1, 1]
    runner = ThreadedPipeline(list(model.stages)[:2], [CPU, CPU], update)
    assert runner.threads == [1, 1]


def test_rejects_bad_arguments():
    model = build("early_exit", "transformer")
    with pytest.raises(ValueError, match="devices"):
        ThreadedPipeline(list(model.stages), [CPU], lambda k, loss: None)
    with pytest.raises(ValueError, match="decoupled"):
        ThreadedPipeline(list(model.stages), [CPU] * 3, lambda k, loss: None, decoupled=False)


# ---------------------------------------------------------------------------------------------- placement
def test_assign_devices_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert assign_devices("auto", 3) == [CPU] * 3
    assert assign_devices(None, 1) == [CPU]
    assert assign_devices("cpu", 2) == [CPU, CPU]
    assert assign_devices(["cpu", "cpu"], 4) == [CPU] * 4
    assert assign_devices(["cpu", "cpu", "cpu"], 1) == [CPU]
    with pytest.raises(UserError, match="CUDA is not available"):
        assign_devices(["cuda:0", "cuda:1"], 2)
    with pytest.raises(UserError, match="not a device"):
        assign_devices(["gpu0"], 2)
    with pytest.raises(UserError, match="only cpu and cuda"):
        assign_devices("meta", 2)
    with pytest.raises(UserError, match="empty"):
        assign_devices([], 2)


def test_auto_spreads_over_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = [torch.device("cuda", i) for i in range(2)]
    assert assign_devices("auto", 4) == [cuda[0], cuda[0], cuda[1], cuda[1]]
    assert assign_devices("auto", 3) == [cuda[0], cuda[0], cuda[1]]
    assert assign_devices("auto", 1) == [cuda[0]]
    assert assign_devices(["cuda:1", "cpu"], 2) == [cuda[1], CPU]
    with pytest.raises(UserError, match="only 2 CUDA"):
        assign_devices(["cuda:2"], 2)
    d = [torch.device("cuda", i) for i in range(3)]
    assert _spread(d, 4) == [d[0], d[0], d[1], d[2]]
    assert _spread(d, 2) == d[:2]


@pytest.mark.parametrize("method", ["scpl", "al"])
def test_inference_through_placed_stages(method):
    model = build(method, "lstm")
    model.eval()
    batch = make_batches(1)[0]
    with torch.no_grad():
        expected = model.run(batch["input_ids"], batch["attention_mask"], return_pooled=True)
    devices = assign_devices(["cpu"], len(model.stages))
    handles = place_stages(list(model.stages), devices)
    with torch.no_grad():
        hooked = model.run(batch["input_ids"], batch["attention_mask"], return_pooled=True)
    for h in handles:
        h.remove()
    for a, b in zip(expected, hooked):
        assert (a.logits is None) == (b.logits is None)
        if a.logits is not None:
            assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(p, q) for p, q in zip(a.pooled, b.pooled))
