"""SupCon with a memory of past features (method.supcon_queue) and learnable class centres
(method.supcon_prototypes): against a naive loop; the queue itself; the head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.losses import SupConLoss
from nlp_decouple.losses.memory import FeatureQueue
from nlp_decouple.methods import ContrastiveHead


def naive_supcon_with_memory(z, labels, mem, mem_labels, tau, divisor):
    """Anchors are the batch rows; the contrast set is batch + memory, the anchor itself excluded."""
    contrast, contrast_labels = torch.cat([z, mem]), labels + mem_labels
    per_anchor = []
    for i in range(z.shape[0]):
        others = [a for a in range(len(contrast_labels)) if a != i]
        positives = [p for p in others if contrast_labels[p] == labels[i]]
        denominator = sum(torch.exp(z[i] @ contrast[a] / tau) for a in others)
        total = sum((torch.log(torch.exp(z[i] @ contrast[p] / tau) / denominator) for p in positives),
                    torch.zeros((), dtype=z.dtype))
        if divisor == "positives_plus_one":
            per_anchor.append(-total / (len(positives) + 1))
        elif positives:
            per_anchor.append(-total / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else torch.zeros((), dtype=z.dtype)


def unit(n, seed, d=5):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("divisor", ["positives", "positives_plus_one"])
@pytest.mark.parametrize("labels,mem_labels", [
    ([0, 1, 2, 3], [0, 1, 1, 5, 2]),  # no positive inside the batch: only the memory gives them
    ([0, 0, 1, 2, 1], [3, 3]),  # the memory adds negatives only
    ([0, 1, 0, 2], [0, 0, 2, 1, 1, 4]),
    ([7], [7, 1]),  # a single text with a positive in memory
])
def test_loss_and_gradient_match_naive_loop(labels, mem_labels, divisor):
    z = unit(len(labels), 1).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    mem = unit(len(mem_labels), 2)
    got = SupConLoss(0.2, divisor)(z, torch.tensor(labels), (mem.clone().requires_grad_(True), torch.tensor(mem_labels)))
    want = naive_supcon_with_memory(z_ref, labels, mem, mem_labels, 0.2, divisor)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("divisor", ["positives", "positives_plus_one"])
@pytest.mark.parametrize("with_memory", [False, True])
def test_centres_match_naive_loop_and_receive_gradients(divisor, with_memory):
    labels, mem_labels = [0, 1, 0, 2], ([2, 1, 1] if with_memory else [])
    z = unit(4, 4).requires_grad_(True)
    centres = unit(3, 5).requires_grad_(True)
    mem = unit(len(mem_labels), 6)
    z_ref, centres_ref = (t.detach().clone().requires_grad_(True) for t in (z, centres))
    memory = (mem, torch.tensor(mem_labels, dtype=torch.long)) if with_memory else None
    got = SupConLoss(0.2, divisor)(z, torch.tensor(labels), memory, centres)
    # naive: the centres are memory rows labelled 0..C-1 that keep their gradient
    want = naive_supcon_with_memory(z_ref, labels, torch.cat([mem, centres_ref]), mem_labels + [0, 1, 2], 0.2, divisor)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(centres.grad, centres_ref.grad, rtol=1e-4, atol=1e-6)


def test_head_with_prototypes_gives_every_anchor_a_positive():
    head = ContrastiveHead(4, "linear", 3, 0.1, "positives", num_prototypes=3)
    loss = head(torch.randn(3, 4), torch.tensor([0, 1, 2])).loss  # no two texts share a class
    assert float(loss.detach()) > 0
    loss.backward()
    assert head.prototypes.grad is not None and head.prototypes.grad.abs().sum() > 0
    assert "prototypes" in dict(head.named_parameters())
    assert load_config(None, ["method.name=scpl", "method.supcon_prototypes=true"]).method.supcon_prototypes


def test_empty_memory_is_the_plain_loss():
    z, y = unit(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    empty = (torch.zeros(0, 5, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    torch.testing.assert_close(SupConLoss()(z, y, empty), SupConLoss()(z, y))


def test_queue_is_first_in_first_out_and_bounded():
    queue = FeatureQueue(5, 2)
    assert queue.contents()[0].shape == (0, 2)
    queue.push(torch.full((3, 2), 1.0), torch.tensor([1, 1, 1]))
    queue.push(torch.full((4, 2), 2.0), torch.tensor([2, 2, 2, 2]))  # overwrites the two oldest rows
    feats, labels = queue.contents()
    assert feats.shape == (5, 2) and sorted(labels.tolist()) == [1, 2, 2, 2, 2]
    queue.push(torch.arange(14.0).view(7, 2), torch.arange(7))  # larger than the queue: its last 5 rows
    assert sorted(queue.contents()[1].tolist()) == [2, 3, 4, 5, 6]
    assert {"features", "labels", "filled", "next"} <= set(queue.state_dict())  # checkpointed with the model


def test_head_fills_the_queue_only_while_training():
    head = ContrastiveHead(4, "linear", 3, 0.1, "positives", queue_size=8)
    pooled, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    first = head(pooled, labels).loss  # empty memory: no anchor has a positive
    assert float(first.detach()) == 0.0 and int(head.queue.filled) == 3
    second = head(pooled, labels).loss  # each text now meets its own earlier feature as a positive
    assert float(second.detach()) > 0 and int(head.queue.filled) == 6
    second.backward()
    assert head.projection.weight.grad is not None
    head.eval()
    head(pooled, labels)
    assert int(head.queue.filled) == 6


def test_config_key():
    assert load_config(None, ["method.name=scpl", "method.supcon_queue=1024"]).method.supcon_queue == 1024
    with pytest.raises(UserError, match="supcon_queue"):
        load_config(None, ["method.supcon_queue=-1"])
