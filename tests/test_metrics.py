"""Evaluation: the classifiers' standardizers are refreshed from training texts before the exits are scored."""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from nlp_decouple.metrics import collect, evaluate, refresh_standardizers
from nlp_decouple.models import Standardizer
from tests.methods.tiny import PAD, VOCAB, build

pytestmark = pytest.mark.usefixtures("one_thread")


def loader(n: int, seed: int):
    """Batches as the trainer's loaders give them (dicts of ids, mask, labels)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, 8):
        b = min(8, n - start)
        ids = torch.randint(1, VOCAB, (b, 9), generator=g)
        mask = torch.arange(9)[None] < torch.randint(3, 10, (b,), generator=g)[:, None]
        out.append({"input_ids": ids.masked_fill(~mask, PAD), "attention_mask": mask,
                    "labels": torch.randint(0, 4, (b,), generator=g)})
    return out


def classifier_inputs(model, batches) -> torch.Tensor:
    """The last group's pooled vectors in evaluation mode: what SCPL's detached classifier reads."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model.run(b["input_ids"], b["attention_mask"], return_pooled=True)[-1].pooled[-1]
                          for b in batches]).double()


def stale_scpl():
    """An SCPL model whose standardizer's running statistics lag its features (as after fast training)."""
    model = build("scpl")
    norm = next(m for m in model.modules() if isinstance(m, Standardizer))
    norm.running_mean.fill_(3.0)
    norm.running_var.fill_(0.05)
    return model, norm


def test_refresh_sets_the_statistics_of_the_classifier_inputs():
    model, norm = stale_scpl()
    train = loader(37, seed=0)  # a last batch of 5: unequal batches are weighted per example
    refresh_standardizers(model, train, Accelerator(cpu=True))
    x = classifier_inputs(model, train)
    torch.testing.assert_close(norm.running_mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var.double(), x.var(0), rtol=1e-5, atol=1e-6)


def test_evaluate_scores_the_exit_with_refreshed_statistics():
    model, norm = stale_scpl()
    train, val = loader(40, seed=0), loader(24, seed=1)
    acc = Accelerator(cpu=True)
    stale = collect(model, val, acc).final_logits
    scores, outs = evaluate(model, {"validation": val}, train, acc, every_group=True, probe_max_iter=50, seed=0)
    x, v = classifier_inputs(model, train), classifier_inputs(model, val)
    head = model.stages[-1].head
    classifier = next(m for m in head.modules() if hasattr(m, "classifier")).classifier
    with torch.no_grad():
        expected = classifier(((v - x.mean(0)) / torch.sqrt(x.var(0) + norm.eps)).float()).numpy()
    got = outs["validation"].final_logits
    assert not torch.allclose(torch.from_numpy(stale), torch.from_numpy(got), atol=1e-3)  # the refresh mattered
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
    assert len(scores["groups"]) == len(model.stages)  # the refresh's pass also served the probes


def test_methods_without_standardizers_are_left_alone():
    model = build("bp")
    assert refresh_standardizers(model, loader(16, seed=0), Accelerator(cpu=True)) is None
