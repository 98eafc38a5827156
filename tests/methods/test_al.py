"""Associated Learning: local losses, where gradients stop, the inference path, and that it learns."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import AG_NEWS, HUB_TOKENIZER, need
from methods.tiny import CLASSES, batch
from methods.tiny import build as tiny_build
from nlp_decouple.config import load_config
from nlp_decouple.methods import METHODS, ALStage
from nlp_decouple.methods.al import LABEL_KEY, associated_loss, autoencoder_loss
from nlp_decouple.classifier import StagedClassifier
from nlp_decouple.models import Carry

LABEL_DIM = 8
ENCODERS = {
    "transformer": (),
    "lstm": ("model.encoder=lstm",),
    "lstm_handoff": ("model.encoder=lstm", "model.lstm_state_handoff=true"),
    "transformer_groups": ("model.groups=[2,1]",),
}


def build(*extra: str) -> StagedClassifier:
    return tiny_build("al", f"method.label_dim={LABEL_DIM}", *extra)


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def has_signal(module: torch.nn.Module) -> bool:
    return any(v is not None and torch.count_nonzero(v) > 0 for v in grads(module).values())


def no_signal(module: torch.nn.Module) -> bool:
    return all(v is None or torch.count_nonzero(v) == 0 for v in grads(module).values())


# ------------------------------------------------------------------ naive computations


def naive_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            total = total + (float(a[i, j]) - float(b[i, j])) ** 2
    return total / a.numel()


def naive_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for row, y in zip(logits.double(), labels):
        total += -(row[y] - torch.log(torch.exp(row).sum()))
    return total / len(labels)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x.double() @ layer.weight.double().T + layer.bias.double()


def test_loss_functions_match_naive():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    torch.testing.assert_close(associated_loss(a, b).double(), naive_mse(a, b))
    torch.testing.assert_close(autoencoder_loss(a, b).double(), naive_mse(a, b))
    labels = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(autoencoder_loss(a, labels).double(), naive_ce(a, labels))


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_each_local_loss_equals_naive_computation(encoder):
    wa, we = 0.7, 1.3
    model = build(*ENCODERS[encoder], f"method.al_assoc_weight={wa}", f"method.al_ae_weight={we}")
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels)
    assert all(isinstance(s, ALStage) for s in model.stages) and len(outs) == 3
    carry, previous = Carry(ids, mask), None
    with torch.no_grad():
        for i, (stage, out) in enumerate(zip(model.stages, outs)):
            head = stage.head
            carry = stage.groups[0](carry.detach())
            s = stage.groups[0].pool(carry)
            if i == 0:  # g_1: the class id's embedding row, then tanh
                t = torch.tanh(torch.stack([head.g[0].weight[y] for y in labels]).double())
                ae = naive_ce(linear(t, head.h), labels)
            else:
                t = torch.tanh(linear(previous, head.g[0]))
                ae = naive_mse(torch.tanh(linear(t, head.h[0])), previous)
            assoc = naive_mse(torch.tanh(linear(s, head.b[0])), t)
            torch.testing.assert_close(out.loss.double(), wa * assoc + we * ae, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out.carry.extras[LABEL_KEY].double(), t, rtol=1e-5, atol=1e-6)
            previous = t


# ------------------------------------------------------------------ where gradients stop


def parts(stage: ALStage) -> dict[str, torch.nn.Module]:
    return {"f": stage.groups, "g": stage.head.g, "b": stage.head.b, "h": stage.head.h}


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_one_layer_loss_reaches_only_that_layer(encoder, detach):
    model = build(*ENCODERS[encoder], f"method.al_detach_target={str(detach).lower()}")
    ids, mask, labels = batch()
    n = len(model.stages)
    assert n == (2 if encoder == "transformer_groups" else 3)
    for j in range(n):
        model.zero_grad(set_to_none=True)
        losses = [out.loss for out in model.iter_stages(ids, mask, labels)]
        losses[j].backward()
        for k, stage in enumerate(model.stages):
            for name, module in parts(stage).items():
                if k == j:
                    assert has_signal(module), f"layer {j}'s loss gave its {name} no gradient"
                else:
                    assert no_signal(module), f"layer {j}'s loss leaked into layer {k}'s {name}"


@pytest.mark.parametrize("detach", [False, True])
def test_associated_loss_trains_g_only_in_the_iclr_form(detach):
    """Associated loss alone (autoencoder weight 0): reaches f and b; reaches g unless the target is
    detached; never h."""
    model = build("model.encoder=lstm", "method.al_ae_weight=0", f"method.al_detach_target={str(detach).lower()}")
    ids, mask, labels = batch()
    losses = [out.loss for out in model.iter_stages(ids, mask, labels)]
    for k, stage in enumerate(model.stages):
        model.zero_grad(set_to_none=True)
        losses[k].backward(retain_graph=True)
        p = parts(stage)
        assert has_signal(p["f"]) and has_signal(p["b"]) and no_signal(p["h"])
        assert has_signal(p["g"]) is not detach


def test_autoencoder_loss_never_reaches_the_input_side():
    model = build("method.al_assoc_weight=0")
    ids, mask, labels = batch()
    losses = [out.loss for out in model.iter_stages(ids, mask, labels)]
    for k, stage in enumerate(model.stages):
        model.zero_grad(set_to_none=True)
        losses[k].backward(retain_graph=True)
        p = parts(stage)
        assert has_signal(p["g"]) and has_signal(p["h"]) and no_signal(p["f"]) and no_signal(p["b"])


def test_label_side_is_detached_between_layers():
    model = build()
    ids, mask, labels = batch()
    outs = list(model.iter_stages(ids, mask, labels))
    assert outs[0].carry.extras[LABEL_KEY].requires_grad  # stage output: still attached to g_1 ...
    seen = []
    original = model.stages[1].forward
    model.stages[1].forward = lambda carry, *a, **k: (seen.append(carry), original(carry, *a, **k))[1]
    list(model.iter_stages(ids, mask, labels))
    assert not seen[0].extras[LABEL_KEY].requires_grad  # ... but cut before layer 2 reads it


def test_per_group_and_summed_backward_give_the_same_update():
    model = build("model.encoder=lstm")
    twin = copy.deepcopy(model)
    ids, mask, labels = batch()
    opts = [torch.optim.Adam(s.parameters(), lr=1e-2) for s in model.stages]
    for opt, out in zip(opts, model.iter_stages(ids, mask, labels)):  # per_group: step as soon as ready
        out.loss.backward()
        opt.step()
    summed = torch.optim.Adam([{"params": s.parameters()} for s in twin.stages], lr=1e-2)
    sum(out.loss for out in twin.iter_stages(ids, mask, labels)).backward()
    summed.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)


# ------------------------------------------------------------------ inference


@pytest.mark.parametrize("encoder", ["transformer", "lstm", "transformer_groups"])
def test_inference_decodes_down_the_chain_with_shortcut_exits(encoder):
    model = build(*ENCODERS[encoder]).eval()
    ids, mask, labels = batch()
    with torch.no_grad():
        outs = model.run(ids, mask)
        assert all(o.loss is None and o.logits.shape == (len(ids), CLASSES) for o in outs)
        carry = Carry(ids, mask)
        for i, stage in enumerate(model.stages):
            for group in stage.groups:
                carry = group(carry)
            z = stage.head.b(stage.groups[-1].pool(carry))  # b_i, then h_i ... h_1
            for lower in reversed(model.stages[: i + 1]):
                z = lower.head.h(z)
            torch.testing.assert_close(outs[i].logits, z)
        final = model(ids, mask)
    torch.testing.assert_close(final, z)
    assert torch.equal(final.argmax(-1), z.argmax(-1))
    # training forward (with labels) computes no logits, and other methods have no inference hook
    assert all(o.logits is None for o in model.run(ids, mask, labels))
    assert METHODS["al"].infer is not None and all(m.infer is None for k, m in METHODS.items() if k != "al")


# ------------------------------------------------------------------ short runs


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread, restored after


def train(overrides: list[str]) -> dict:
    from nlp_decouple.trainer import Trainer

    return Trainer(load_config("recipes/quickstart.yaml", overrides)).fit()


def test_inference_decodes_bridge_outputs_of_bf16_stages():
    """Under bf16 mixed precision each stage's forward runs in autocast, the decoding hook outside it:
    a bf16 bridge output must still go through the float32 decoders."""
    model = build(*ENCODERS["lstm"]).eval()
    ids, mask, _ = batch()
    for stage in model.stages:
        forward = stage.forward
        stage.forward = lambda *a, forward=forward, **k: torch.autocast("cpu", dtype=torch.bfloat16)(forward)(*a, **k)
    with torch.no_grad():
        outs = model.run(ids, mask)
    assert all(o.logits.dtype == torch.float32 and torch.isfinite(o.logits).all() for o in outs)


def test_short_lstm_run_learns_synthetic(tmp_path):
    # AL wants a larger learning rate than the quickstart's 2e-3 (docs/methods.md, AL settings): 5e-3
    results = train([f"output_dir={tmp_path}", "train.progress=false", "method.name=al", "model.encoder=lstm",
                     "data.synthetic_train_size=1500", "data.synthetic_test_size=400", "train.epochs=5",
                     "train.batch_size=32", "train.lr=5e-3"])
    assert results["test_accuracy"] > 0.45, results["test_accuracy"]  # chance: 0.25
    groups = results["groups_at_best_epoch"]
    assert [g["kind"] for g in groups] == ["exit"] * 3  # every layer has its shortcut exit: no probes
    metrics = tmp_path / "synthetic-lstm-al-seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert all(row["groups"][-1]["test"] == row["test"]["accuracy"] for row in rows)  # last exit = prediction


@pytest.mark.slow
@need(AG_NEWS)
def test_short_run_on_ag_news(tmp_path):
    results = train([f"output_dir={tmp_path}", "train.progress=false", "method.name=al", "model.encoder=lstm",
                     "data.name=ag_news", f"data.path={AG_NEWS}", f"tokenizer.name={HUB_TOKENIZER}",
                     "data.max_length=32", "model.hidden_size=32", "model.num_layers=1", "train.epochs=2",
                     "train.batch_size=32", "train.lr=5e-3"])
    assert results["test_accuracy"] >= 0.6, results["test_accuracy"]
