"""No gradient crosses a cut: each decoupled stage learns only from its own local loss."""
from __future__ import annotations

import pytest
import torch

from methods.tiny import batch, build
from nlp_decouple.classifier import StagedClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

DECOUPLED = ["scpl", "early_exit", "deinforeg"]


def losses(model: StagedClassifier) -> list[torch.Tensor]:
    ids, mask, labels = batch()
    return [out.loss for out in model.iter_stages(ids, mask, labels)]


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def has_signal(g: dict[str, torch.Tensor | None]) -> bool:
    return any(v is not None and torch.count_nonzero(v) > 0 for v in g.values())


def no_signal(g: dict[str, torch.Tensor | None]) -> bool:
    return all(v is None or torch.count_nonzero(v) == 0 for v in g.values())


ENCODERS = {
    "transformer": (),
    "lstm": ("model.encoder=lstm",),
    "lstm_handoff": ("model.encoder=lstm", "model.lstm_state_handoff=true"),
    "transformer_groups": ("model.groups=[2,1]",),
}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("method", DECOUPLED)
def test_one_stage_loss_reaches_only_that_stage(method, encoder):
    model = build(method, *ENCODERS[encoder])
    n = len(model.stages)
    assert n == (2 if encoder == "transformer_groups" else 3)
    for j in range(n):
        model.zero_grad(set_to_none=True)
        stage_losses = losses(model)
        assert len(stage_losses) == n and all(torch.isfinite(l) for l in stage_losses)
        stage_losses[j].backward()
        for k, stage in enumerate(model.stages):
            g = grads(stage)
            if k == j:
                assert has_signal(g), f"stage {j}'s own loss gave it no gradient"
                assert has_signal(grads(stage.groups[0])), f"stage {j}'s loss did not reach its encoder group"
            else:
                assert no_signal(g), f"stage {j}'s loss leaked gradient into stage {k}"


@pytest.mark.parametrize("method", DECOUPLED)
@pytest.mark.parametrize("encoder", ["transformer", "lstm_handoff"])
def test_scaling_one_stage_loss_changes_only_that_stage(method, encoder):
    model = build(method, *ENCODERS[encoder])
    n = len(model.stages)

    def summed_grads(weights: list[float]) -> list[dict]:
        model.zero_grad(set_to_none=True)
        sum(w * l for w, l in zip(weights, losses(model))).backward()
        return [grads(stage) for stage in model.stages]

    base = summed_grads([1.0] * n)
    for k in range(n):
        weights = [1.0] * n
        weights[k] = 3.5
        scaled = summed_grads(weights)
        for j in range(n):
            for name, g in base[j].items():
                other = scaled[j][name]
                if g is None:
                    assert other is None
                elif j == k:  # the scaled stage's gradient is scaled with it
                    torch.testing.assert_close(other, 3.5 * g, rtol=1e-4, atol=1e-6)
                else:
                    torch.testing.assert_close(other, g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_bp_final_loss_reaches_the_embedding(encoder):
    model = build("bp", *ENCODERS[encoder])
    assert len(model.stages) == 1 and not model.decoupled
    (loss,) = losses(model)
    loss.backward()
    emb = model.embedding.weight.grad
    assert emb is not None and torch.count_nonzero(emb) > 0
    for group in model.groups():
        assert has_signal(grads(group))


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_decoupled_final_loss_does_not_reach_the_embedding(encoder):
    """The contrast to BP: in every decoupled method the last stage's loss stops at its cut."""
    for method in DECOUPLED:
        model = build(method, *ENCODERS[encoder])
        losses(model)[-1].backward()
        assert model.embedding.weight.grad is None or torch.count_nonzero(model.embedding.weight.grad) == 0


def _last_group_pooled(model: StagedClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels)
    last = model.stages[-1]
    # re-run the last group on the (detached) carry the previous stage handed over
    carry = last.groups[0](outs[-2].carry.detach())
    return last.groups[0].pool(carry), labels


def test_scpl_classifier_loss_does_not_train_the_encoder():
    model = build("scpl")
    last = model.stages[-1]
    contrastive, classifier = last.head.heads
    pooled, labels = _last_group_pooled(model)

    classifier(pooled, labels).loss.backward(retain_graph=True)
    assert no_signal(grads(last.groups[0])), "SCPL's classifier must read the detached last group"
    assert has_signal(grads(classifier))

    contrastive(pooled, labels).loss.backward()
    assert has_signal(grads(last.groups[0])), "the last group learns from its contrastive loss"


def test_early_exit_classifier_trains_its_group():
    model = build("early_exit")
    last = model.stages[-1]
    pooled, labels = _last_group_pooled(model)
    last.head(pooled, labels).loss.backward()
    assert has_signal(grads(last.groups[0]))


@pytest.mark.parametrize("detach", [False, True])
def test_deinforeg_classifier_reaches_the_block_unless_detached(detach):
    model = build("deinforeg", f"method.classifier_detach={str(detach).lower()}")
    last = model.stages[-1]
    head = last.head
    pooled, labels = _last_group_pooled(model)
    head.classifier(head.projection(pooled), labels).loss.backward()
    assert has_signal(grads(head.classifier))
    assert has_signal(grads(last.groups[0])) is not detach


def test_deinforeg_embedding_stage_has_no_classifier():
    model = build("deinforeg")
    heads = [stage.head for stage in model.stages]
    assert heads[0].classifier is None and all(h.classifier is not None for h in heads[1:])
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels)
    assert outs[0].logits is None and all(o.logits is not None for o in outs[1:])
