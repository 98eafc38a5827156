"""Projection heads: shapes, and what mlp_bn's BatchNorm is for (removing a batch-wide component)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlp_decouple.models.heads import make_projection

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["identity", "linear", "mlp", "mlp_bn"])
def test_projection_shapes(kind):
    torch.manual_seed(0)
    out_dim = None if kind == "identity" else 8
    head = make_projection(kind, 16, out_dim)
    assert head(torch.randn(5, 16)).shape == (5, out_dim or 16)


def test_mlp_bn_ignores_a_component_shared_by_the_whole_batch():
    # mean-pooled Transformer features carry a large common vector (the averaged positional code);
    # in training mode the BatchNorm centres each feature over the batch, so adding any constant vector
    # to every example leaves the projection unchanged -- the plain mlp is moved by it
    torch.manual_seed(0)
    x, common = torch.randn(32, 16), 5 * torch.randn(16)
    bn, plain = make_projection("mlp_bn", 16, 8), make_projection("mlp", 16, 8)
    bn.train()
    torch.testing.assert_close(bn(x + common), bn(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain(x + common), plain(x), atol=1e-2)


def test_mlp_bn_spreads_nearly_collinear_features():
    # features at cosine ~0.99 to each other (a shared direction plus small noise): after mlp_bn the
    # normalised projections are far from collinear (what remains comes from the ReLU's positive mean
    # through the last Linear), so SupCon does not start at its chance value; the plain mlp keeps them
    torch.manual_seed(0)
    x = 10 * torch.randn(16) + 0.5 * torch.randn(64, 16)
    off = ~torch.eye(64, dtype=torch.bool)

    def mean_cos(z):
        z = F.normalize(z, dim=-1)
        return (z @ z.T)[off].mean().item()

    assert mean_cos(x) > 0.95
    assert mean_cos(make_projection("mlp_bn", 16, 8)(x)) < 0.5
    assert mean_cos(make_projection("mlp", 16, 8)(x)) > 0.95


@pytest.mark.parametrize("kind", ["mlp_bn", "standardize"])
def test_a_one_example_training_batch_uses_the_running_statistics(kind):
    # an epoch's last batch can hold one example: batch statistics do not exist there
    from nlp_decouple.methods import ClassifierHead

    torch.manual_seed(0)
    head = make_projection("mlp_bn", 16, 8) if kind == "mlp_bn" else ClassifierHead(16, 4, True, standardize=True)
    run = (lambda x: head(x)) if kind == "mlp_bn" else (lambda x: head(x, None).logits)
    head.train()
    run(torch.randn(32, 16) + 3)  # moves the running statistics away from their initial values
    one = torch.randn(1, 16)
    trained = run(one)
    head.eval()
    torch.testing.assert_close(trained, run(one))


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="unknown projection"):
        make_projection("mlp_ln", 16)
