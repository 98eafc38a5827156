"""DeInfoReg's invariance / variance / covariance terms against naive loops (float64)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nlp_decouple.losses import InfoRegLoss, covariance_term, invariance_term, label_similarity, variance_term


def naive_target(labels: list[int], num_classes: int) -> list[list[float]]:
    return [[1.0 if a == b else -1.0 / (num_classes - 1) for b in labels] for a in labels]


def naive_invariance(z: torch.Tensor, labels: list[int], num_classes: int) -> torch.Tensor:
    n = z.shape[0]
    target = naive_target(labels, num_classes)
    total = torch.zeros((), dtype=z.dtype)
    for i in range(n):
        for j in range(n):
            total = total + (z[i] @ z[j] - target[i][j]) ** 2
    return total / (n * n)


def naive_variance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    total = torch.zeros((), dtype=z.dtype)
    for k in range(d):
        mean = sum(z[b, k] for b in range(n)) / n
        var = sum((z[b, k] - mean) ** 2 for b in range(n)) / (n - 1)  # unbiased
        std = torch.sqrt(var + 1e-4)
        total = total + torch.clamp(1.0 - std, min=0.0)
    return total / d / n  # mean over dims, times the reference's extra 1/B


def naive_covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    means = [sum(z[b, k] for b in range(n)) / n for k in range(d)]
    total = torch.zeros((), dtype=z.dtype)
    for k in range(d):
        for m in range(d):
            if k == m:
                continue
            cov = sum((z[b, k] - means[k]) * (z[b, m] - means[m]) for b in range(n)) / (n - 1)
            total = total + cov ** 2
    return total / d


def sample(n: int, d: int, seed: int, normalise: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return F.normalize(z, dim=-1) if normalise else z


LABELS = {
    "mixed4": ([0, 1, 2, 3, 0, 1, 1, 2], 4),
    "binary": ([0, 1, 1, 0, 1], 2),
    "one_class_of_many": ([3, 3, 3, 3], 5),
    "all_distinct": ([0, 1, 2, 3, 4, 5], 6),
}


def test_label_similarity_values():
    target = label_similarity(torch.tensor([0, 1, 0, 3]), 4)
    third = -1.0 / 3.0
    want = torch.tensor([[1, third, 1, third], [third, 1, third, third], [1, third, 1, third],
                         [third, third, third, 1]])
    torch.testing.assert_close(target.float(), want)
    # binary: the opposite class is exactly -1
    torch.testing.assert_close(label_similarity(torch.tensor([0, 1]), 2).float(), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


@pytest.mark.parametrize("case", sorted(LABELS))
def test_invariance_matches_naive(case):
    labels, c = LABELS[case]
    z = sample(len(labels), 5, seed=len(labels)).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    got = invariance_term(z, torch.tensor(labels), c)
    want = naive_invariance(z_ref, labels, c)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-8)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-6, atol=1e-8)


def test_invariance_is_zero_on_the_simplex():
    """Class means on a regular simplex have cosine -1/(C-1): the target is met exactly."""
    c = 4
    eye = torch.eye(c, dtype=torch.float64)
    simplex = F.normalize(eye - eye.mean(0), dim=-1)  # C points in R^C, pairwise cosine -1/(C-1)
    labels = torch.tensor([0, 1, 2, 3, 2, 0])
    z = simplex[labels]
    assert float(invariance_term(z, labels, c)) == pytest.approx(0.0, abs=1e-12)
    assert float(naive_invariance(z, labels.tolist(), c)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n,d,scale", [(8, 5, 1.0), (6, 3, 0.05), (16, 4, 3.0), (2, 7, 1.0)])
def test_variance_matches_naive(n, d, scale):
    z = (sample(n, d, seed=n + d, normalise=False) * scale).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    got = variance_term(z)
    want = naive_variance(z_ref)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-9)
    if float(want.detach()) > 0:  # relu active somewhere: gradients to compare
        got.backward()
        want.backward()
        torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-6, atol=1e-9)


def test_variance_collapsed_features_hit_the_maximum():
    """All rows equal: std = sqrt(1e-4) = 0.01 in every dimension, term = (1 - 0.01) / B."""
    z = torch.ones(10, 3, dtype=torch.float64)
    assert float(variance_term(z)) == pytest.approx(0.99 / 10, rel=1e-9)


def test_variance_is_zero_for_widely_spread_features():
    z = sample(12, 4, seed=1, normalise=False) * 10
    assert float(variance_term(z)) == 0.0


@pytest.mark.parametrize("n,d", [(8, 5), (5, 2), (20, 6), (3, 4)])
def test_covariance_matches_naive(n, d):
    z = sample(n, d, seed=3 * n + d).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    got = covariance_term(z)
    want = naive_covariance(z_ref)
    assert float(want.detach()) > 0
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-10)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-6, atol=1e-10)


def test_covariance_ignores_the_diagonal():
    """Independent axes scaled differently: large variances, no off-diagonal covariance."""
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [0.0, -5.0]], dtype=torch.float64)
    assert float(covariance_term(z)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 2.0, 3.0), (0.0, 1.0, 0.0)])
@pytest.mark.parametrize("case", ["mixed4", "binary"])
def test_module_is_the_weighted_sum(case, weights):
    labels, c = LABELS[case]
    z = sample(len(labels), 6, seed=9).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    got = InfoRegLoss(c, weights)(z, torch.tensor(labels))
    w_inv, w_var, w_cov = weights
    want = (w_inv * naive_invariance(z_ref, labels, c) + w_var * naive_variance(z_ref)
            + w_cov * naive_covariance(z_ref))
    assert got.dtype == torch.float32  # computed in float32 whatever comes in
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    got.backward()
    want.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-4, atol=1e-6)


def test_default_weights_are_one_one_one():
    labels, c = LABELS["mixed4"]
    z = sample(len(labels), 6, seed=4)
    got = InfoRegLoss(c)(z, torch.tensor(labels))
    want = naive_invariance(z, labels, c) + naive_variance(z) + naive_covariance(z)
    assert math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5)


@pytest.mark.parametrize("normalise", [True, False])
def test_one_example_batch_gives_a_finite_loss_and_gradients(normalise):
    """B=1 (a last batch of one): the unbiased variance is 0/0; the spread terms are 0 with no gradient."""
    z = sample(1, 5, seed=2, normalise=normalise).float().requires_grad_(True)
    for term in (variance_term, covariance_term):
        value = term(z)
        assert float(value.detach()) == 0.0 and value.requires_grad
    loss = InfoRegLoss(4)(z, torch.tensor([2]))
    loss.backward()
    assert torch.isfinite(loss.detach()) and torch.isfinite(z.grad).all()
    # what is left is the invariance term alone: (z.z - 1)^2, exactly 0 on a unit vector
    z_ref = z.detach().double().clone().requires_grad_(True)
    want = naive_invariance(z_ref, [2], 4)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), z_ref.grad, rtol=1e-5, atol=1e-6)
