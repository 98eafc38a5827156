"""SCPL's method.exit_input=all_groups: the exit reads every group's pooled vector, concatenated, and
no gradient reaches an encoder group through it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.tiny import batch, build
from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.methods import AllGroupsExitStage
from nlp_decouple.methods.stages import EXIT_FEATURES_KEY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("encoder", [(), ("model.encoder=lstm",), ("model.groups=[2,1]",)])
def test_exit_reads_every_groups_pooled_vector(encoder):
    model = build("scpl", "method.exit_input=all_groups", *encoder)
    assert all(isinstance(s, AllGroupsExitStage) for s in model.stages)
    exit = model.stages[-1].exit
    assert exit.classifier[0].in_features == sum(s.groups[-1].pool_dim for s in model.stages)
    model.eval()
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels, return_pooled=True)
    pooled = torch.cat([o.pooled[-1] for o in outs], dim=-1)  # the reference: concatenated by hand
    torch.testing.assert_close(outs[-1].logits, exit.classifier(exit.norm(pooled)))
    assert EXIT_FEATURES_KEY not in outs[-1].carry.extras  # the last stage hands nothing on
    torch.testing.assert_close(model(ids, mask), outs[-1].logits)  # inference without labels: the same


def test_exit_loss_trains_only_the_exit():
    model = build("scpl", "method.exit_input=all_groups")
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels, return_pooled=True)
    features = torch.cat([o.pooled[-1] for o in outs], dim=-1)
    exit = model.stages[-1].exit
    exit(features, labels).loss.backward()
    assert exit.classifier[-1].weight.grad is not None and exit.classifier[-1].weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if not name.startswith("stages.2.exit."):
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    # and each stage's loss (SupCon, plus the exit's cross-entropy in the last) reaches only its own stage
    for j in range(len(model.stages)):
        model.zero_grad(set_to_none=True)
        model.run(ids, mask, labels)[j].loss.backward()
        for k, stage in enumerate(model.stages):
            moved = any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in stage.groups.parameters())
            assert moved == (k == j), (j, k)


def test_the_exit_is_a_standardised_linear_probe_on_the_concatenation():
    model = build("scpl", "method.exit_input=all_groups", "method.classifier_standardize=true")
    model.eval()
    ids, mask, labels = batch()
    outs = model.run(ids, mask, labels, return_pooled=True)
    exit = model.stages[-1].exit
    features = torch.cat([o.pooled[-1] for o in outs], dim=-1)
    loss = F.cross_entropy(exit.classifier(exit.norm(features)), labels)
    torch.testing.assert_close(outs[-1].loss - model.stages[-1].head(outs[-1].pooled[-1], labels).loss, loss)


def test_other_methods_refuse_the_option():
    with pytest.raises(UserError, match="SCPL's option"):
        load_config(None, ["method.name=bp", "method.exit_input=all_groups"])


def test_the_exit_never_changes_how_the_encoder_trains(tmp_path):
    """Same seed, with and without method.exit_input=all_groups: every encoder group and contrastive head ends
    with the same weights after a few steps (dropout on), so a difference in accuracy is the exit's alone."""
    from nlp_decouple.trainer import Trainer

    def train(run: str, *extra: str) -> dict[str, torch.Tensor]:
        cfg = load_config(None, [f"output_dir={tmp_path}", f"run_name={run}", "train.progress=false",
                                 "data.name=synthetic", "tokenizer.train=word", "tokenizer.vocab_size=200",
                                 "data.synthetic_train_size=200", "data.synthetic_test_size=40", "model.hidden_size=16",
                                 "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2", "model.dropout=0.2",
                                 "train.batch_size=16", "train.lr=5e-3", "train.seed=3", "method.name=scpl",
                                 "method.projection=mlp_bn", "method.supcon_prototypes=true", *extra])
        trainer = Trainer(cfg)
        trainer.model.train()
        batches = iter(trainer.loaders.train)
        for _ in range(4):
            trainer.engine.step(next(batches))
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    last, every = train("last"), train("all", "method.exit_input=all_groups")
    encoder = [n for n in last if ".head.heads.1." not in n]  # all but the last-group classifier
    assert len(encoder) > 10
    for name in encoder:
        other = name.replace(".head.heads.0.", ".head.")  # the last stage's contrastive head, renamed
        torch.testing.assert_close(every[other], last[name], rtol=0, atol=0, msg=name)
