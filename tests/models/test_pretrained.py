"""Pretrained Hub encoders cut into blocks: tiny random BERT, RoBERTa, DistilBERT, DeBERTa-v2/v3, MPNet and
ModernBERT (and ELECTRA) models saved to a temp folder, checked against the plain ``AutoModel``; one test on
the real shared MiniLM."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import AG_NEWS, HF_CACHE, HUB_TOKENIZER, REPO, need
from nlp_decouple.classifier import StagedClassifier
from nlp_decouple.config import load_config
from nlp_decouple.errors import UserError
from nlp_decouple.models import HubEmbeddingBlock, HubLayerBlock, masked_mean
from nlp_decouple.models.pretrained import FAMILIES as HUB_FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, PAD, CLASSES, MAXLEN, LAYERS = 120, 0, 4, 24, 3
DECOUPLED = ["scpl", "early_exit", "deinforeg", "al"]
FAMILIES = ["bert", "roberta", "distilbert", "deberta-v2", "mpnet", "modernbert"]
TINY = {  # a few layers, hidden 32; pad id 0 = the [PAD] of a trained tokenizer (RoBERTa counts positions by it)
    "bert": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64),
    "electra": dict(embedding_size=16, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                    intermediate_size=64),
    "distilbert": dict(dim=32, n_layers=LAYERS, n_heads=2, hidden_dim=64),
    # DeBERTa-v3's settings (relative attention both ways, log buckets, shared keys, no absolute positions)
    "deberta-v2": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                       relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                       max_relative_positions=40, norm_rel_ebd="layer_norm", share_att_key=True,
                       position_biased_input=False),
    # DeBERTa-v2 xlarge's: a convolution after the first layer, absolute positions too
    "deberta-v2-conv": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                            relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                            max_relative_positions=40, norm_rel_ebd="layer_norm", conv_kernel_size=3, conv_act="gelu"),
    "mpnet": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64),
    # global, local, global attention; a window of 2 tokens each side, shorter than the texts
    "modernbert": dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                       local_attention=4, global_attn_every_n_layers=2, bos_token_id=2, eos_token_id=3,
                       cls_token_id=2, sep_token_id=3),
    "albert": dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}


MODEL_TYPE = {"deberta-v2-conv": "deberta-v2"}
PADS = {"mpnet": 1}  # MPNet's embeddings number positions from padding id 1, whatever the config says


def save_tiny(name: str, directory) -> str:
    config = AutoConfig.for_model(MODEL_TYPE.get(name, name), vocab_size=VOCAB, max_position_embeddings=40,
                                  pad_token_id=PADS.get(name, PAD), **TINY[name])
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hub")
    return {t: save_tiny(t, root / t) for t in [*FAMILIES, "electra", "deberta-v2-conv"]}


def build(path: str, method: str = "bp", *extra: str) -> StagedClassifier:
    cfg = load_config(None, ["model.encoder=pretrained", f"model.pretrained={path}", "model.dropout=0",
                             f"method.name={method}", *extra])
    torch.manual_seed(0)
    return StagedClassifier.from_config(cfg, VOCAB, pad_of(path), CLASSES, MAXLEN)


def pad_of(path: str) -> int:
    return json.loads((Path(path) / "config.json").read_text())["pad_token_id"]


def batch(b: int = 8, t: int = 11, pad: int = PAD):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    lengths[0] = t  # one text fills the batch: no all-padding column
    mask = torch.arange(t)[None] < lengths[:, None]
    labels = torch.arange(b) % CLASSES  # every class twice: SupCon has positives
    return ids.masked_fill(~mask, pad), mask, labels


# ------------------------------------------------------------------------------------------ cutting


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_and_each_layer_become_blocks(hub, family):
    plain = AutoModel.from_pretrained(hub[family])
    layers = plain.get_submodule(HUB_FAMILIES[family].layers)
    model = build(hub[family], "scpl")  # num_layers null: every layer, one block per group
    blocks = [g.blocks[0] for g in model.groups()]
    assert len(blocks) == LAYERS + 1
    assert isinstance(blocks[0], HubEmbeddingBlock) and all(isinstance(b, HubLayerBlock) for b in blocks[1:])
    assert type(blocks[0].embeddings) is type(plain.embeddings)
    assert torch.equal(model.embedding.weight, plain.get_input_embeddings().weight)
    for block, layer in zip(blocks[1:], layers):  # the Hub's own modules with its weights
        assert type(block.layer) is type(layer)
        for (n, p), (_, q) in zip(block.layer.named_parameters(), layer.named_parameters()):
            assert torch.equal(p, q), n
    # every Hub parameter but the unused pooler's is in exactly one block
    ours = {hub_name(i, n, family) for i, b in enumerate(blocks) for n, _ in b.named_parameters()}
    assert ours == {n for n, _ in plain.named_parameters() if not n.startswith("pooler.")}

    first_two = build(hub[family], "early_exit", "model.num_layers=2", "model.groups=[2,1]")
    assert [len(g.blocks) for g in first_two.groups()] == [2, 1]
    assert first_two.stages[0].groups[0].blocks[0].hub_config.num_hidden_layers == 2
    assert [len(g.blocks) for g in build(hub[family], "scpl", "model.groups=2").groups()] == [2, 2]


@pytest.mark.parametrize("extra, message", [
    (("model.num_layers=5",), "has 3 layers"),
    (("model.groups=5",), "5 groups cannot be cut from 4 blocks"),
    (("model.groups=[2,1]",), "summing to 4"),
])
def test_bad_cuts_name_the_fix(hub, extra, message):
    with pytest.raises(UserError, match=message):
        build(hub["bert"], "scpl", *extra)


def test_unsupported_family_is_one_line_naming_the_supported(tmp_path, capsys):
    from nlp_decouple.cli.train import main

    path = save_tiny("albert", tmp_path / "albert")
    capsys.readouterr()
    code = main(["recipes/quickstart.yaml", "model.encoder=pretrained", f"model.pretrained={path}",
                 "model.num_layers=null", "tokenizer.vocab_size=100", f"output_dir={tmp_path}", "train.progress=false",
                 "data.synthetic_train_size=40", "data.synthetic_test_size=10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "model_type 'albert'" in err and "bert, roberta, xlm-roberta, electra" in err and "distilbert" in err


def test_config_requires_the_model_and_defaults_the_tokenizer_to_it():
    with pytest.raises(UserError, match="needs model.pretrained"):
        load_config(None, ["model.encoder=pretrained"])
    with pytest.raises(UserError, match="read only by model.encoder=pretrained"):
        load_config(None, ["model.pretrained=some/model"])
    cfg = load_config(None, ["model.encoder=pretrained", "model.pretrained=some/model"])
    assert cfg.tokenizer.name == "some/model" and cfg.model.num_layers is None
    assert load_config(None, []).model.num_layers == 3  # the from-scratch default is unchanged
    assert load_config(None, ["model.encoder=pretrained", "model.pretrained=some/model",
                              "tokenizer.train=wordpiece"]).tokenizer.name is None


def test_tokenizer_and_length_must_fit_the_model(hub):
    cfg = load_config(None, ["model.encoder=pretrained", f"model.pretrained={hub['roberta']}"])
    with pytest.raises(UserError, match="tokenizer has 500 tokens"):
        StagedClassifier.from_config(cfg, 500, PAD, CLASSES, MAXLEN)
    with pytest.raises(UserError, match=r"exceeds the 39 positions"):  # RoBERTa numbers from padding_idx + 1
        StagedClassifier.from_config(cfg, VOCAB, PAD, CLASSES, 40)
    with pytest.raises(UserError, match="pads with id 1"):
        StagedClassifier.from_config(cfg, VOCAB, 1, CLASSES, MAXLEN)


# ------------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_a_texts_pooled_vectors(hub, family, pooling):
    model = build(hub[family], "scpl", f"model.pooling={pooling}").eval()
    ids, mask, labels = batch(pad=pad_of(hub[family]))
    with torch.no_grad():
        padded = [p for out in model.run(ids, mask, return_pooled=True) for p in out.pooled]
        for i in range(len(ids)):
            n = int(mask[i].sum())
            alone = [p for out in model.run(ids[i:i + 1, :n], mask[i:i + 1, :n], return_pooled=True)
                     for p in out.pooled]
            for k, (a, b) in enumerate(zip(alone, padded)):
                torch.testing.assert_close(a[0], b[i], rtol=1e-5, atol=1e-5, msg=f"text {i}, group {k}")


# ------------------------------------------------------------------------------------------ BP


def hub_name(index: int, name: str, family: str = "bert") -> str:
    """The Hub model's name of parameter ``name`` of block ``index`` (block 0: the embedding block)."""
    part, _, rest = name.partition(".")
    if part == "layer":
        return f"{HUB_FAMILIES[family].layers}.{index - 1}.{rest}"
    return f"embeddings_project.{rest}" if part == "project" else name  # embeddings, encoder, final_norm


def plain_model(path: str, family: str, **config) -> torch.nn.Module:
    """The Hub model as AutoModel loads it, without dropout (as model.dropout=0 builds ours)."""
    no_dropout = {k: 0.0 for k in HUB_FAMILIES[MODEL_TYPE.get(family, family)].dropout}
    return AutoModel.from_pretrained(path, **no_dropout, **config)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("family", [*FAMILIES, "electra", "deberta-v2-conv"])
def test_bp_equals_a_plain_automodel_forward_and_the_same_head(hub, family, pooling):
    model = build(hub[family], "bp", f"model.pooling={pooling}")  # model.dropout=0
    plain = plain_model(hub[family], family)
    ids, mask, labels = batch(pad=pad_of(hub[family]))  # texts of several lengths: padding in the batch
    head = model.stages[0].head.classifier
    for train in (False, True):  # dropout is 0: training and evaluation forwards agree too
        model.train(train), plain.train(train)
        hidden = plain(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = hidden[:, 0] if pooling == "cls" else masked_mean(hidden, mask)
        (out,) = model.run(ids, mask, labels, return_pooled=True)
        torch.testing.assert_close(out.pooled[-1], pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits, head(pooled), rtol=1e-5, atol=1e-5)
    # BP is full fine-tuning: its loss reaches the embedding module and every layer, with the Hub model's
    # own gradients (tables shared by all layers, as MPNet's and DeBERTa's, summed over them)
    out.loss.backward()
    torch.nn.functional.cross_entropy(head(pooled), labels).backward()
    expected = dict(plain.named_parameters())
    blocks = [b for g in model.groups() for b in g.blocks]
    for i, block in enumerate(blocks):
        for n, p in block.named_parameters():
            q = expected[hub_name(i, n, MODEL_TYPE.get(family, family))]
            assert p.grad is not None, n
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"block {i}: {n}")
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0
               for n, p in model.named_parameters() if "token_type" not in n), "a parameter got no gradient"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_layers_equal_the_hub_model_cut_to_them(hub, family):
    """Keeping 2 of 3 layers is the Hub model with 2 layers (ModernBERT: its final norm after the second)."""
    model = build(hub[family], "bp", "model.num_layers=2").eval()
    types = getattr(AutoConfig.from_pretrained(hub[family]), "layer_types", None)
    cut = {"layer_types": types[:2]} if types else {}  # ModernBERT's config lists every layer's attention
    plain = plain_model(hub[family], family, num_hidden_layers=2, **cut).eval()
    assert len(plain.get_submodule(HUB_FAMILIES[family].layers)) == 2
    ids, mask, labels = batch(pad=pad_of(hub[family]))
    with torch.no_grad():
        (out,) = model.run(ids, mask, labels, return_pooled=True)
        hidden = plain(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(out.pooled[-1], masked_mean(hidden, mask), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ cuts


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def has_signal(module: torch.nn.Module) -> bool:
    return any(g is not None and torch.count_nonzero(g) > 0 for g in grads(module))


@pytest.mark.parametrize("method", DECOUPLED)
@pytest.mark.parametrize("family", FAMILIES)
def test_one_stage_loss_reaches_only_that_stage(hub, family, method):
    model = build(hub[family], method, "model.groups=[2,1,1]")  # embedding + layer 1 | layer 2 | layer 3
    ids, mask, labels = batch(pad=pad_of(hub[family]))
    for j in range(len(model.stages)):
        model.zero_grad(set_to_none=True)
        losses = [out.loss for out in model.iter_stages(ids, mask, labels)]
        assert len(losses) == 3 and all(torch.isfinite(l) for l in losses)
        losses[j].backward()
        for k, stage in enumerate(model.stages):
            if k == j:
                assert has_signal(stage.groups[0]), f"stage {j}'s loss did not reach its Hub blocks"
            else:
                assert not has_signal(stage), f"stage {j}'s loss leaked gradient into stage {k}"


def test_freezing_the_embeddings_freezes_the_whole_hub_embedding_module(hub):
    from nlp_decouple.config import TrainConfig
    from nlp_decouple.optim import build_optimization

    model = build(hub["bert"], "scpl", "model.freeze_embeddings=true")
    frozen = dict(model.stages[0].groups[0].blocks[0].named_parameters())
    assert {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight"} <= set(frozen)
    assert not any(p.requires_grad for p in frozen.values())
    assert all(p.requires_grad for g in model.groups()[1:] for p in g.parameters())
    optimization = build_optimization(list(model.stages), TrainConfig(), per_stage=True, updates_per_epoch=4)
    assert 0 not in optimization.optimizer_of and sorted(optimization.optimizer_of) == [1, 2, 3]  # identity SupCon: nothing to train


def test_hub_dropout_follows_train_and_eval_mode(hub):
    model = build(hub["bert"], "bp", "model.dropout=0.5")
    layer = model.groups()[1].blocks[0].layer
    assert layer.output.dropout.p == 0.5 and layer.attention.self.dropout.p == 0.5
    ids, mask, _ = batch()
    model.train()
    assert not torch.equal(model(ids, mask), model(ids, mask))
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))


@pytest.mark.parametrize("method", ["scpl", "al", "bp"])
@pytest.mark.parametrize("family", ["roberta", "deberta-v2", "mpnet"])  # and what the first layer hands on
def test_pipelined_equals_sequential(hub, family, method):
    from tests.engines.test_pipelines import make_batches, pipelined, sequential

    reference = build(hub[family], method, "model.groups=[2,1,1]")
    model = copy.deepcopy(reference)
    batches = [{**b, "input_ids": b["input_ids"].clamp(max=VOCAB - 1)} for b in make_batches(n=3, t=10)]
    assert pipelined(model, batches) == sequential(reference, batches)
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), n


# ------------------------------------------------------------------------------------------ saving


@pytest.mark.parametrize("method", ["bp", *DECOUPLED])
@pytest.mark.parametrize("family", [*FAMILIES, "electra", "deberta-v2-conv"])
def test_saved_model_loads_from_its_directory_alone_with_identical_logits(hub, tmp_path, family, method):
    from transformers import AutoModelForSequenceClassification

    from nlp_decouple.hf import DecoupledForSequenceClassification

    source = shutil.copytree(hub[family], tmp_path / "source")
    cfg = load_config(None, ["model.encoder=pretrained", f"model.pretrained={source}", f"method.name={method}",
                             "model.num_layers=2", "method.projection=mlp_bn"])
    torch.manual_seed(0)
    pad = pad_of(source)
    model = StagedClassifier.from_config(cfg, VOCAB, pad, CLASSES, MAXLEN)
    ids, mask, labels = batch(pad=pad)
    with torch.no_grad():
        model.train().run(ids, mask, labels)  # non-trivial BatchNorm statistics
    model.eval()
    wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, VOCAB, pad, MAXLEN, list("abcd"))
    wrapped.save_pretrained(str(tmp_path / "saved"))
    shutil.rmtree(source)  # neither the original weights nor the Hub are needed to load it

    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["pretrained_config"]["model_type"] == MODEL_TYPE.get(family, family) and saved["encoder"]["num_layers"] == 2
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        expected = model.run(ids, mask)
        assert torch.equal(reloaded(ids, mask).logits, expected[-1].logits)
        exits = reloaded.exit_logits(ids, mask)
        assert all(torch.equal(exits[g], o.logits) for g, o in zip(wrapped.exit_groups, expected) if o.logits is not None)
        if reloaded.has_early_exits:
            adaptive = reloaded.predict_adaptive(ids, mask, threshold=0.0)  # every text answers at the first exit
            first = min(exits)
            assert torch.equal(adaptive.group, torch.full_like(adaptive.group, first))
            torch.testing.assert_close(adaptive.probs, exits[first].float().softmax(-1))
    for (n, a), b in zip(model.state_dict().items(), reloaded.staged.state_dict().values()):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------------------------------ end to end


def test_train_cli_two_steps_then_predict_and_the_transformers_pipeline(hub, tmp_path, capsys):
    cmd = [sys.executable, "-m", "nlp_decouple.train", str(REPO / "recipes" / "quickstart.yaml"),
           "model.encoder=pretrained", f"model.pretrained={hub['bert']}", "model.num_layers=null",
           "tokenizer.train=wordpiece", "tokenizer.vocab_size=100", "method.name=early_exit", "model.groups=2",
           "train.max_steps=2", "train.epochs=1", "train.batch_size=16", "train.head_lr=1e-2",
           "train.weight_decay=0.01", "train.scheduler=linear", "train.warmup_ratio=0.5", "train.grad_clip=1.0",
           "data.synthetic_train_size=120", "data.synthetic_test_size=40", "eval.probe_samples=40",
           f"output_dir={tmp_path}", "run_name=tiny", "train.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # offline: conftest set HF_HUB_OFFLINE
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and results["encoder"] == "pretrained" and results["group_sizes"] == [2, 2]
    assert [g["kind"] for g in results["groups_at_best_epoch"]] == ["exit", "exit"]

    from nlp_decouple.cli.predict import main as predict
    from nlp_decouple.inference import encoded_batches, load_for_inference

    texts = ["the team won the match", "the new phone is slow"]
    assert predict([str(run), *texts, "--json", "--exit-threshold", "0.3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, tok = load_for_inference(run / "best", "cpu")
    enc = next(encoded_batches(tok, texts, model.config.max_seq_length, 8, model.device))
    adaptive = model.predict_adaptive(enc["input_ids"], enc["attention_mask"], 0.3)
    assert [r["group"] for r in rows] == adaptive.group.tolist()

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(run / "best"), device="cpu")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    for got, p in zip(classify(texts), probs):
        assert got["label"] == model.config.id2label[int(p.argmax())]
        assert got["score"] == pytest.approx(float(p.max()), abs=1e-5)


def save_tiny_with_tokenizer(name: str, directory: Path) -> str:
    """A tiny model beside its own tokenizer, as a checkpoint on the Hub holds both: a WordPiece vocabulary
    of the synthetic texts with RoBERTa-style specials (pad id 1, as MPNet's embeddings require)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from nlp_decouple.data.synthetic import make_synthetic

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(make_synthetic(200, 10)["train"]["text"], trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")
    assert fast.pad_token_id == 1 and len(fast) <= VOCAB
    config = AutoConfig.for_model(MODEL_TYPE.get(name, name), vocab_size=VOCAB, max_position_embeddings=40,
                                  pad_token_id=1, **TINY[name])
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(directory))
    fast.save_pretrained(str(directory))
    return str(directory)


@pytest.mark.parametrize("method", ["bp", "scpl"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_with_its_own_tokenizer_and_serves_the_transformers_pipeline_on_texts_of_any_length(tmp_path, family, method):
    from transformers import pipeline

    from nlp_decouple.inference import load_for_inference, predict_texts
    from nlp_decouple.trainer import Trainer

    path = save_tiny_with_tokenizer(family, tmp_path / "hub")
    cfg = load_config(REPO / "recipes" / "quickstart.yaml", [
        "model.encoder=pretrained", f"model.pretrained={path}", "model.num_layers=null", "tokenizer.train=null",
        f"method.name={method}",
        "data.max_length=32", "data.synthetic_train_size=64", "data.synthetic_test_size=16", "eval.probe_samples=16",
        "train.batch_size=16", "train.max_steps=2", "train.epochs=1", "train.lr=1e-3", f"output_dir={tmp_path}",
        "run_name=tiny", "train.progress=false"])
    assert cfg.tokenizer.name == path  # the model's own tokenizer by default
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.groups()[1].parameters()]
    results = trainer.fit()
    assert results["steps"] == 2 and results["nonfinite_steps"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.groups()[1].parameters())), "no update"

    long_text = " ".join(["the new phone is slow and i do not like it at all, the team won the match"] * 30)
    texts = ["the team won the match", long_text, "good", long_text[::-1]]
    model, tok = load_for_inference(tmp_path / "tiny" / "best", "cpu")
    assert len(tok(long_text, truncation=False)["input_ids"]) > 10 * cfg.data.max_length
    probs, _ = predict_texts(model, tok, texts, batch_size=2)
    classify = pipeline("text-classification", model=str(tmp_path / "tiny" / "best"), device="cpu")
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    for size in (1, 3):  # batched: padding must not change an answer
        for answer, p in zip(classify(texts, top_k=None, batch_size=size), probs):
            scores = {row["label"]: row["score"] for row in answer}
            assert answer[0]["label"] == labels[int(p.argmax())]
            assert [scores[name] for name in labels] == pytest.approx(p.tolist(), abs=1e-5)


@need(HF_CACHE / "models--sentence-transformers--all-MiniLM-L6-v2")
@need(AG_NEWS)
def test_real_minilm_fine_tunes_a_few_steps_offline(tmp_path):
    from nlp_decouple.trainer import Trainer

    cfg = load_config(REPO / "recipes" / "agnews_minilm.yaml", [
        f"data.path={AG_NEWS}", "data.max_length=24", "data.max_train_samples=32", "data.max_eval_samples=16",
        "train.batch_size=8", "train.eval_batch_size=16", "train.max_steps=2", "train.epochs=1",
        "eval.every_group=false", f"output_dir={tmp_path}", "train.progress=false", "method.name=scpl"])
    assert cfg.tokenizer.name == HUB_TOKENIZER == cfg.model.pretrained
    trainer = Trainer(cfg)
    sizes = [len(g.blocks) for g in trainer.model.groups()]
    assert sizes == [3, 2, 2] and trainer.model.embedding.weight.shape == (30522, 384)
    results = trainer.fit()
    assert results["steps"] == 2 and results["nonfinite_steps"] == 0
    assert (cfg.run_dir() / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("family,refused", [("deberta-v2", True), ("mpnet", True), ("bert", False)])
def test_torch_pipelines_refuse_families_that_share_tables_between_layers(hub, family, refused):
    from nlp_decouple.engines.pipelining import build_torch_pipeline

    model = build(hub[family], "bp", "model.groups=[2,1,1]")
    cfg = load_config(None, ["method.name=bp", "train.pipeline=torch_gpipe"])
    before = torch.random.get_rng_state()
    with pytest.raises(UserError) as info:  # in one process: bert gets as far as the launch check
        build_torch_pipeline(cfg, model, None, None, None, 16)
    message = str(info.value)
    assert ("share a table besides the hidden states" in message) == refused and "\n" not in message
    assert refused or message.startswith("train.pipeline=torch_gpipe pipelines bp over the processes of a launch")
    assert torch.equal(torch.random.get_rng_state(), before)

