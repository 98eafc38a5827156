"""Saved models in Hugging Face form: reload exactly, every method's inference path, adaptive early exit."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from nlp_decouple.config import load_config
from nlp_decouple.hf import DecoupledForSequenceClassification
from nlp_decouple.classifier import StagedClassifier

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, PAD, CLASSES, MAXLEN = 40, 0, 3, 20
LABELS = ["neg", "neu", "pos"]


def staged(method: str, encoder: str) -> tuple[StagedClassifier, object]:
    cfg = load_config(None, [f"method.name={method}", f"model.encoder={encoder}", "model.hidden_size=16",
                             "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2", "method.projection=mlp"])
    torch.manual_seed(0)
    model = StagedClassifier.from_config(cfg, VOCAB, PAD, CLASSES, MAXLEN)
    # non-trivial BatchNorm statistics (SCPL's standardised classifier input) must survive the round trip
    model.train()
    ids, mask = inputs()
    with torch.no_grad():
        model.run(ids, mask, labels=torch.tensor([0, 1, 2, 0, 1]))
    return model.eval(), cfg


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (5, 11), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 6:] = mask[3, 2:] = False
    return ids.masked_fill(~mask, PAD), mask


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
@pytest.mark.parametrize("method", ["bp", "scpl", "early_exit", "deinforeg", "al"])
def test_save_and_reload_gives_identical_outputs(tmp_path, method, encoder):
    model, cfg = staged(method, encoder)
    wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, VOCAB, PAD, MAXLEN, LABELS)
    wrapped.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nlp_decouple" and saved["method"]["name"] == method
    assert saved["encoder"]["encoder"] == encoder and saved["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}

    # loaded through the Auto factory from the directory alone: no recipe, no training config
    assert isinstance(AutoConfig.from_pretrained(str(tmp_path)), DecoupledForSequenceClassification.config_class)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert isinstance(reloaded, DecoupledForSequenceClassification)
    ids, mask = inputs()
    with torch.no_grad():
        expected = model.run(ids, mask)
        out = reloaded(ids, mask, labels=torch.tensor([0, 1, 2, 0, 1]))
    assert torch.equal(out.logits, expected[-1].logits)
    assert out.loss is not None and torch.isfinite(out.loss)
    exits = reloaded.exit_logits(ids, mask)
    assert list(exits) == [g for g, o in zip(wrapped.exit_groups, expected) if o.logits is not None]
    for (g, logits), o in zip(exits.items(), [o for o in expected if o.logits is not None]):
        assert torch.equal(logits, o.logits)
    for a, b in zip(model.state_dict().values(), reloaded.staged.state_dict().values()):
        assert torch.equal(a, b)
    # the sinusoidal table is not saved (a non-persistent buffer): it must be rebuilt, not left empty
    if encoder == "transformer":
        block = reloaded.staged.stages[0].groups[0].blocks[0]
        assert torch.equal(block.position_table, model.stages[0].groups[0].blocks[0].position_table)


def test_exit_groups_and_which_methods_exit_early():
    # embedding + 2 blocks = 3 groups
    expected = {"bp": ([2], False), "scpl": ([0, 1, 2], False), "early_exit": ([0, 1, 2], True),
                "deinforeg": ([0, 1, 2], True), "al": ([0, 1, 2], True)}
    for method, (groups, early) in expected.items():
        model, cfg = staged(method, "lstm")
        wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, VOCAB, PAD, MAXLEN, LABELS)
        assert wrapped.exit_groups == groups  # the last group of each stage (bp: one stage)
        assert wrapped.has_early_exits is early, method


@pytest.mark.parametrize("method", ["early_exit", "al"])
def test_adaptive_exit_answers_at_the_first_confident_exit(method):
    model, cfg = staged(method, "transformer")
    wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, VOCAB, PAD, MAXLEN, LABELS).eval()
    ids, mask = inputs()
    exits = {g: l.softmax(-1) for g, l in wrapped.exit_logits(ids, mask).items()}
    # a threshold between the texts' first-exit confidences: some answer at group 0, the rest later
    first = exits[min(exits)].max(-1).values
    threshold = float(first.median())
    pred = wrapped.predict_adaptive(ids, mask, threshold)
    for i in range(ids.shape[0]):  # independent reference: scan the exits in order
        answer = next((g for g, p in exits.items() if p[i].max() >= threshold), max(exits))
        assert int(pred.group[i]) == answer
        assert torch.allclose(pred.probs[i], exits[answer][i], atol=1e-6)
    assert (pred.group == min(exits)).any() and (pred.group != min(exits)).any()
    # no threshold: the final exit answers every text, equal to the model's forward
    plain = wrapped.predict_adaptive(ids, mask, None)
    assert (plain.group == max(exits)).all()
    assert torch.allclose(plain.probs, wrapped(ids, mask).logits.softmax(-1), atol=1e-6)


def test_adaptive_exit_stops_running_groups_once_every_text_answered():
    model, cfg = staged("early_exit", "lstm")
    wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, VOCAB, PAD, MAXLEN, LABELS).eval()
    ran = []
    for k, stage in enumerate(wrapped.staged.stages):
        stage.register_forward_hook(lambda module, args, out, k=k: ran.append(k))
    ids, mask = inputs()
    pred = wrapped.predict_adaptive(ids, mask, threshold=1e-6)  # every text is confident enough at group 0
    assert (pred.group == 0).all() and ran == [0]


# ------------------------------------------------------------------ transformers' pipeline on saved models

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
PIPE_MAXLEN = 16


def saved_model(tmp_path, encoder: str):
    """A model saved as the trainer saves it, with a tokenizer trained on synthetic texts; for
    ``pretrained``, a tiny randomly initialised BERT (40 positions) saved first as its Hub checkpoint."""
    from transformers import AutoModel, BertConfig

    from nlp_decouple.config import TokenizerConfig
    from nlp_decouple.data import make_synthetic
    from nlp_decouple.hf import save_model_dir
    from nlp_decouple.tokenization import build_tokenizer

    texts = list(make_synthetic(200, 20, seed=0)["train"]["text"])
    tok = build_tokenizer(TokenizerConfig(train="wordpiece", vocab_size=120), texts)
    extra = ["model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2"]
    if encoder == "pretrained":
        torch.manual_seed(0)
        hub = BertConfig(vocab_size=len(tok), max_position_embeddings=40, pad_token_id=tok.pad_token_id, **TINY_BERT)
        AutoModel.from_config(hub).save_pretrained(str(tmp_path / "hub"))
        extra = [f"model.pretrained={tmp_path / 'hub'}", "model.num_layers=null"]
    cfg = load_config(None, ["method.name=early_exit", f"model.encoder={encoder}", "model.dropout=0", *extra])
    torch.manual_seed(0)
    model = StagedClassifier.from_config(cfg, len(tok), tok.pad_token_id, CLASSES, PIPE_MAXLEN).eval()
    wrapped = DecoupledForSequenceClassification.from_staged(model, cfg, len(tok), tok.pad_token_id, PIPE_MAXLEN, LABELS)
    save_model_dir(wrapped, tok, tmp_path / "best")
    return tmp_path / "best", texts


@pytest.mark.parametrize("encoder", ["lstm", "transformer", "pretrained"])
def test_pipeline_equals_predict_on_texts_of_any_length(tmp_path, encoder):
    from transformers import AutoTokenizer, pipeline

    from nlp_decouple.inference import load_for_inference, predict_texts

    path, texts = saved_model(tmp_path, encoder)
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.model_max_length == PIPE_MAXLEN
    assert json.loads((path / "config.json").read_text())["truncation"] == {"side": "right", "before": 1, "after": 1}
    long_text = " ".join(texts[:40])
    assert len(tok(long_text)["input_ids"]) > 10 * PIPE_MAXLEN  # the pipeline itself does not truncate
    batch = [texts[0], long_text, "good", texts[1] + " " + texts[2] + " " + texts[3], long_text[::-1]]
    model, ptok = load_for_inference(path, "cpu")
    probs, _ = predict_texts(model, ptok, batch, batch_size=2)
    classify = pipeline("text-classification", model=str(path), device="cpu")
    for size in (1, 3):
        got = classify(batch, top_k=None, batch_size=size)
        for answer, p in zip(got, probs):
            scores = {row["label"]: row["score"] for row in answer}
            assert answer[0]["label"] == LABELS[int(p.argmax())]
            assert [scores[name] for name in LABELS] == pytest.approx(p.tolist(), abs=1e-5)


def test_a_long_input_is_cut_as_the_tokenizer_cuts_it():
    from nlp_decouple.hf import cut_like_tokenizer

    # right padding and left padding, texts longer and shorter than 5; [CLS]=1 ... [SEP]=2, pad 0
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 15, 2], [1, 20, 21, 2, 0, 0, 0, 0], [0, 0, 1, 30, 31, 32, 33, 2]])
    mask = ids.ne(0)
    cut, cut_mask = cut_like_tokenizer(ids, mask, length=5, head=4)  # right side: keep [CLS] + 3, then [SEP]
    assert cut.tolist() == [[1, 10, 11, 12, 2], [1, 20, 21, 2, 0], [1, 30, 31, 32, 2]]
    assert cut_mask.tolist() == [[True] * 5, [True] * 4 + [False], [True] * 5]
    cut, _ = cut_like_tokenizer(ids, mask, length=5, head=1)  # left side: keep [CLS], then the last 4
    assert cut.tolist() == [[1, 13, 14, 15, 2], [1, 20, 21, 2, 0], [1, 31, 32, 33, 2]]
