"""Parameter groups and schedules: body vs head learning rates, no weight decay on biases and norm weights,
linear decay after a warm-up for every group."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from nlp_decouple.classifier import StagedClassifier
from nlp_decouple.config import load_config
from nlp_decouple.optim import StagedAdamW, build_optimization, parameter_groups

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, PAD, CLASSES, MAXLEN = 60, 0, 3, 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bert")
    config = AutoConfig.for_model("bert", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    AutoModel.from_config(config).save_pretrained(str(path))
    return str(path)


def build(encoder: str, method: str, tiny_bert: str, *train: str):
    model_keys = (["model.encoder=pretrained", f"model.pretrained={tiny_bert}"] if encoder == "pretrained" else
                  [f"model.encoder={encoder}", "model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32",
                   "model.num_layers=2"])
    cfg = load_config(None, [*model_keys, f"method.name={method}", "method.projection=mlp", *train])
    return StagedClassifier.from_config(cfg, VOCAB, PAD, CLASSES, MAXLEN), cfg.train


def settings_by_name(stage: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in groups), "a parameter sits in two groups"
    return {n: by_id[id(p)] for n, p in stage.named_parameters()}


@pytest.mark.parametrize("encoder", ["transformer", "lstm", "pretrained"])
def test_defaults_keep_one_group_per_stage(encoder, tiny_bert):
    model, t = build(encoder, "deinforeg", tiny_bert)
    for stage in model.stages:
        (group,) = parameter_groups(stage, t)
        assert group["params"] == list(stage.parameters())
        assert group["lr"] == t.lr and group["weight_decay"] == 0.0


@pytest.mark.parametrize("method", ["bp", "scpl", "al"])
@pytest.mark.parametrize("encoder", ["transformer", "lstm", "pretrained"])
def test_body_and_head_rates_and_no_decay_on_biases_and_norm_weights(encoder, method, tiny_bert):
    model, t = build(encoder, method, tiny_bert, "train.lr=5e-5", "train.head_lr=1e-3", "train.weight_decay=0.01")
    for stage in model.stages:
        got = settings_by_name(stage, parameter_groups(stage, t))
        for name, (lr, decay) in got.items():
            assert lr == (5e-5 if name.startswith("groups.") else 1e-3), name
            # the usual fine-tuning convention, by name: biases and LayerNorm/BatchNorm weights are not decayed
            no_decay = name.endswith("bias") or "LayerNorm" in name or ".norm" in name or "bias_" in name
            assert decay == (0.0 if no_decay else 0.01), name


def test_frozen_parameters_are_left_out(tiny_bert):
    model, t = build("pretrained", "early_exit", tiny_bert, "model.freeze_embeddings=true", "train.head_lr=1e-3")
    groups = parameter_groups(model.stages[0], t)
    assert {g["lr"] for g in groups} == {1e-3}  # only the first exit's classifier trains in stage 0
    assert sum(len(g["params"]) for g in groups) == len(list(model.stages[0].head.parameters()))


def test_linear_schedule_warms_up_then_decays_every_group(tiny_bert):
    model, t = build("pretrained", "bp", tiny_bert, "train.lr=5e-5", "train.head_lr=1e-3", "train.weight_decay=0.01",
                     "train.scheduler=linear", "train.warmup_ratio=0.25", "train.epochs=1")
    optimization = build_optimization(list(model.stages), t, per_stage=False, updates_per_epoch=8)  # 2 warm-up updates of 8
    (optimizer,), (schedule,) = optimization.optimizers, optimization.schedulers
    base = schedule.base_lrs  # the groups' own rates, which the schedule scales
    assert sorted(set(base)) == [5e-5, 1e-3]
    factors = []
    for _ in range(8):
        factors.append([g["lr"] / b for g, b in zip(optimizer.param_groups, base)])
        optimizer.step()
        schedule.step()
    expected = [0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    for row, e in zip(factors, expected):
        assert row == pytest.approx([e] * len(base))


def test_a_skipped_stage_is_left_untouched_and_the_others_step_as_alone():
    """StagedAdamW.step(skip=flags): stage 1 flagged keeps its weights, moments and step count; stage 0 takes
    the step a plain fused AdamW over it alone takes; nothing is read on the host to decide."""
    torch.manual_seed(0)
    stages = [torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)]
    reference = [p.detach().clone().requires_grad_() for p in stages[0].parameters()]
    groups = [{"params": list(s.parameters()), "stage": k} for k, s in enumerate(stages)]
    optimizer, alone = StagedAdamW(groups, lr=0.1), torch.optim.AdamW(reference, lr=0.1, fused=True)
    for skip in ([False, False], [False, True]):
        for p, q in zip(stages[0].parameters(), reference):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for p in stages[1].parameters():  # a flagged stage's gradient is NaN (its loss was)
            p.grad = torch.full_like(p, float("nan")) if skip[1] else torch.randn_like(p)
        before = [p.detach().clone() for p in stages[1].parameters()]
        moments = [v.clone() for p in stages[1].parameters() for v in optimizer.state.get(p, {}).values()]
        optimizer.step(skip=torch.tensor(skip))
        alone.step()
        assert all(torch.equal(p, q) for p, q in zip(stages[0].parameters(), reference))
        after = [v for p in stages[1].parameters() for v in optimizer.state[p].values()]
        if skip[1]:
            assert all(torch.equal(p, b) for p, b in zip(stages[1].parameters(), before))
            assert all(torch.equal(v, m) for v, m in zip(after, moments))  # step count included
        else:
            assert not any(torch.equal(p, b) for p, b in zip(stages[1].parameters(), before))


def test_layout_names_each_optimizer_and_its_stages(tiny_bert):
    model, t = build("lstm", "scpl", tiny_bert)
    one = build_optimization(list(model.stages), t, per_stage=False, updates_per_epoch=4)
    per_stage = build_optimization(list(model.stages), t, per_stage=True, updates_per_epoch=4)
    assert one.layout() == "StagedAdamW over stages [0, 1, 2]"
    assert per_stage.layout() == "; ".join(f"StagedAdamW over stages [{k}]" for k in range(3))


@pytest.mark.parametrize("method", ["bp", "scpl", "al"])
@pytest.mark.parametrize("per_stage", [False, True])
def test_group_lr_scale_multiplies_each_groups_rate_and_its_heads(method, per_stage, tiny_bert):
    # 2 blocks + embedding = 3 layer groups; factor k+1 on group k
    model, t = build("transformer", method, tiny_bert, "train.lr=1e-3", "train.head_lr=1e-2",
                     "train.group_lr_scale=1,2,3")
    group_of = {id(p): k for k, g in enumerate(model.groups()) for p in g.parameters()}
    opt = build_optimization(list(model.stages), t, per_stage, updates_per_epoch=10)
    seen = 0
    for o in opt.optimizers:
        for g in o.param_groups:
            stage = model.stages[g["stage"]]
            last = group_of[id(next(iter(stage.groups[-1].parameters())))]
            for p in g["params"]:
                want = 1e-3 * (group_of[id(p)] + 1) if id(p) in group_of else 1e-2 * (last + 1)
                assert g["lr"] == pytest.approx(want)
                seen += 1
    assert seen == sum(p.requires_grad for p in model.parameters())


def test_group_lr_scale_of_the_wrong_length_names_the_fix(tiny_bert):
    from nlp_decouple.errors import UserError

    model, t = build("transformer", "scpl", tiny_bert, "train.group_lr_scale=1,2")
    with pytest.raises(UserError, match="one per group, e.g. train.group_lr_scale=1,1,1"):
        build_optimization(list(model.stages), t, False, updates_per_epoch=10)
