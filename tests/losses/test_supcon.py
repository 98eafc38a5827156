"""SupConLoss against a naive double loop over anchors, positives and denominators (float64)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nlp_decouple.losses import SupConLoss

TEMPERATURES = [0.05, 0.1, 0.5, 1.0]
LABEL_PATTERNS = {
    "mixed": [0, 1, 0, 2, 1, 0, 3, 2],
    "all_equal": [2, 2, 2, 2, 2],
    "one_singleton": [0, 0, 1, 1, 1, 2],  # anchor 5 has no positive
    "pairs": [0, 0, 1, 1],
    "two_examples_same": [4, 4],
}


def naive_supcon(z: torch.Tensor, labels: list[int], tau: float, divisor: str = "positives") -> torch.Tensor:
    """Khosla et al. "SupCon out", written as the loops of the formula in methods.md."""
    n = z.shape[0]
    per_anchor, counted = [], 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        denominator = sum(torch.exp(z[i] @ z[a] / tau) for a in range(n) if a != i) if n > 1 else None
        total = torch.zeros((), dtype=z.dtype)
        for p in positives:
            total = total + torch.log(torch.exp(z[i] @ z[p] / tau) / denominator)
        if divisor == "positives":
            if positives:
                per_anchor.append(-total / len(positives))
                counted += 1
        else:  # SCPL reference: |P(i)| + 1, every anchor counted (no positive -> 0)
            per_anchor.append(-total / (len(positives) + 1))
            counted += 1
    if counted == 0:
        return torch.zeros((), dtype=z.dtype)
    return sum(per_anchor) / counted


def features(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("divisor", ["positives", "positives_plus_one"])
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
def test_loss_and_gradient_match_naive_loop(pattern, tau, divisor):
    labels = LABEL_PATTERNS[pattern]
    z = features(len(labels), seed=len(labels)).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)

    got = SupConLoss(tau, divisor)(z, torch.tensor(labels))
    want = naive_supcon(z_ref, labels, tau, divisor)
    assert math.isfinite(float(got.detach()))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)

    got.backward()
    want.backward()
    assert z.grad is not None
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-5)
    if pattern == "two_examples_same":  # the only denominator term is the positive: log 1 = 0
        assert float(want.detach()) == pytest.approx(0.0, abs=1e-12)
    else:  # the comparison is not between two zero gradients
        assert z_ref.grad.abs().max() > 1e-3


@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_larger_batch_with_many_classes(tau):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (24,), generator=g).tolist()
    z = features(24, d=16, seed=7).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    got = SupConLoss(tau)(z, torch.tensor(labels))
    want = naive_supcon(z_ref, labels, tau)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-5)


def test_hand_computed_value_two_pairs():
    """Four orthogonal-ish points, two classes: the value written out by hand."""
    tau = 0.5
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    sim = (z @ z.T / tau).exp()
    # anchor 0: positive 1, denominators 1, 2, 3 -- and so on
    terms = [sim[0, 1] / (sim[0, 1] + sim[0, 2] + sim[0, 3]),
             sim[1, 0] / (sim[1, 0] + sim[1, 2] + sim[1, 3]),
             sim[2, 3] / (sim[2, 0] + sim[2, 1] + sim[2, 3]),
             sim[3, 2] / (sim[3, 0] + sim[3, 1] + sim[3, 2])]
    want = -sum(torch.log(t) for t in terms) / 4
    torch.testing.assert_close(SupConLoss(tau)(z, labels).double(), want, rtol=1e-6, atol=1e-7)
    # |P|+1 = 2 for every anchor: exactly half
    torch.testing.assert_close(SupConLoss(tau, "positives_plus_one")(z, labels).double(), want / 2,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("divisor", ["positives", "positives_plus_one"])
def test_all_distinct_labels_is_explicit_zero_with_working_backward(divisor):
    z = features(5).float().requires_grad_(True)
    loss = SupConLoss(0.1, divisor)(z, torch.arange(5))
    assert float(loss.detach()) == 0.0
    assert loss.requires_grad  # still attached: a backward is a no-op, not an error
    loss.backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0
    assert float(naive_supcon(z.detach().double(), list(range(5)), 0.1, divisor)) == 0.0


@pytest.mark.parametrize("divisor", ["positives", "positives_plus_one"])
def test_single_example_is_zero(divisor):
    z = features(1).float().requires_grad_(True)
    loss = SupConLoss(0.1, divisor)(z, torch.tensor([3]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_anchor_without_positives_is_left_out_of_the_mean():
    """'positives' averages over anchors that have a positive; adding a lone-class example that is far
    from everything changes only the denominators, not the number of averaged anchors."""
    labels = [0, 0, 1, 1, 2]
    z = features(5, seed=11)
    with_lone = SupConLoss(0.2)(z, torch.tensor(labels)).double()
    want = naive_supcon(z, labels, 0.2)
    torch.testing.assert_close(with_lone, want, rtol=1e-5, atol=1e-6)
    # the same loss with the lone anchor counted as 0 would be 4/5 of this
    counted_as_zero = naive_supcon(z, labels, 0.2, "positives") * 4 / 5
    assert not torch.isclose(with_lone, counted_as_zero, rtol=1e-3)


def test_stable_at_small_temperature():
    z = features(8, seed=5)
    labels = [0, 1, 0, 1, 2, 2, 3, 3]
    loss = SupConLoss(0.01)(z.float(), torch.tensor(labels))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), naive_supcon(z, labels, 0.01), rtol=1e-4, atol=1e-4)


def test_half_precision_input_is_computed_in_float32():
    z = features(8, seed=2)
    labels = [0, 1, 0, 1, 2, 2, 3, 3]
    loss = SupConLoss(0.05)(z.half(), torch.tensor(labels))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), naive_supcon(z.half().double(), labels, 0.05), rtol=1e-4, atol=1e-4)


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError):
        SupConLoss(0.0)
    with pytest.raises(ValueError):
        SupConLoss(0.1, divisor="anchors")


@pytest.mark.parametrize("tau", [0.05, 0.2])
def test_learned_temperature_matches_naive_loop_and_gets_its_gradient(tau):
    labels = LABEL_PATTERNS["mixed"]
    z = features(len(labels), seed=3)
    loss_fn = SupConLoss(tau, learn_temperature=True)
    got = loss_fn(z, torch.tensor(labels))
    got.backward()
    # the naive loop with tau = exp(log tau) as a float64 leaf: same value, same d loss / d log tau
    log_tau = torch.tensor(math.log(tau), dtype=torch.float64, requires_grad=True)
    want = naive_supcon(z, labels, log_tau.exp())
    want.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_fn.log_temperature.grad.double(), log_tau.grad, rtol=1e-4, atol=1e-6)
    # at its start the learned loss is the fixed-temperature loss
    torch.testing.assert_close(got.detach(), SupConLoss(tau)(z, torch.tensor(labels)))


def test_learned_temperature_is_floored():
    loss_fn = SupConLoss(0.1, learn_temperature=True)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(1e-4))
    assert float(loss_fn.temperature) == pytest.approx(SupConLoss.MIN_TEMPERATURE)
    assert SupConLoss(0.1).log_temperature is None and SupConLoss(0.1).temperature == 0.1
