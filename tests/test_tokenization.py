"""Tokenizers: the Hub one from the offline cache, and trained ones that survive save/reload."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from nlp_decouple.config import TokenizerConfig
from nlp_decouple.data import make_synthetic
from nlp_decouple.errors import UserError
from nlp_decouple.tokenization import build_tokenizer, save_tokenizer

from conftest import AG_NEWS, HF_CACHE, HUB_TOKENIZER, need

TRAIN_TEXTS = list(make_synthetic(300, 50, seed=0)["train"]["text"])
HELD_OUT = list(make_synthetic(300, 50, seed=0)["test"]["text"])


@pytest.fixture(scope="module")
def news_texts() -> list[str]:
    """A few hundred real headlines (richer vocabulary than the synthetic set)."""
    import pandas as pd

    frame = pd.read_parquet(next((AG_NEWS / "data").glob("train-*.parquet")))
    return [str(t) for t in frame["text"][:400]]


# ---------------------------------------------------------------- the Hub tokenizer


@need(HF_CACHE)
def test_hub_tokenizer_loads_offline_from_shared_cache():
    tok = build_tokenizer(TokenizerConfig(name=HUB_TOKENIZER), None)
    assert tok.vocab_size == 30522 and len(tok) == 30522
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == 0
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    # uncased BERT: case does not change the ids
    assert ids == tok("HELLO World")["input_ids"]
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["hello", "world"]


def test_missing_tokenizer_explains_hf_hub_cache():
    with pytest.raises(UserError) as info:
        build_tokenizer(TokenizerConfig(name="no-such-org/no-such-tokenizer-zz"), None)
    message = str(info.value)
    assert "no-such-org/no-such-tokenizer-zz" in message and "HF_HUB_CACHE" in message
    assert "tokenizer.train" in message


def test_no_tokenizer_configured():
    with pytest.raises(UserError, match=r"tokenizer\.name"):
        build_tokenizer(TokenizerConfig(), None)


def test_training_needs_texts():
    with pytest.raises(ValueError):
        build_tokenizer(TokenizerConfig(train="word"), None)


# ---------------------------------------------------------------- trained tokenizers


@pytest.mark.parametrize("kind", ["wordpiece", "word"])
def test_trained_tokenizer_round_trip(kind, tmp_path):
    tok = build_tokenizer(TokenizerConfig(train=kind, vocab_size=500), TRAIN_TEXTS)
    assert tok.pad_token == "[PAD]" and tok.pad_token_id is not None
    assert tok.unk_token == "[UNK]"
    save_tokenizer(tok, tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(again) == len(tok)
    assert again.pad_token == "[PAD]" and again.pad_token_id == tok.pad_token_id
    assert again.unk_token_id == tok.unk_token_id
    for text in HELD_OUT[:30] + ["not a bad match", "The TEAM said ÉXCELLENT"]:
        assert again(text)["input_ids"] == tok(text)["input_ids"], text
    batch = again(HELD_OUT[:4], padding=True)
    lengths = [sum(m) for m in batch["attention_mask"]]
    assert len(set(lengths)) > 1  # texts of different lengths: the short ones were padded
    for ids, n in zip(batch["input_ids"], lengths):
        assert all(i == again.pad_token_id for i in ids[n:])


@pytest.mark.parametrize("kind", ["wordpiece", "word"])
def test_trained_tokenizer_encodes_known_and_unknown_words(kind):
    tok = build_tokenizer(TokenizerConfig(train=kind, vocab_size=500), TRAIN_TEXTS)
    ids = tok("the team was good")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["the", "team", "was", "good"]  # every word was seen
    assert tok.unk_token_id not in ids
    unknown = "жжж" if kind == "wordpiece" else "zebra"  # letters never seen / a word never seen
    ids = tok(f"the {unknown} was good")["input_ids"]
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["the", "[UNK]", "was", "good"]
    # lowercase by default, accents stripped
    assert tok("The TEAM")["input_ids"] == tok("the team")["input_ids"]
    assert tok("GOÓD")["input_ids"] == tok("good")["input_ids"]


def test_lowercase_off_keeps_case():
    tok = build_tokenizer(TokenizerConfig(train="word", vocab_size=500, lowercase=False),
                          TRAIN_TEXTS + ["Team"])
    assert tok("Team")["input_ids"] != tok("team")["input_ids"]


@need(AG_NEWS)
@pytest.mark.parametrize("kind, vocab_size", [("wordpiece", 300), ("word", 200), ("word", 1000)])
def test_vocab_size_is_respected(kind, vocab_size, news_texts):
    distinct = {w for t in news_texts for w in t.lower().split()}
    assert len(distinct) > 1000  # so every cap below actually binds
    tok = build_tokenizer(TokenizerConfig(train=kind, vocab_size=vocab_size), news_texts)
    assert len(tok) <= vocab_size
    assert len(tok) >= vocab_size * 0.8  # and the room is used
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        assert special in tok.get_vocab()


def test_min_frequency_drops_rare_words():
    texts = ["common words here"] * 5 + ["rareword appears once"]
    tok = build_tokenizer(TokenizerConfig(train="word", vocab_size=500, min_frequency=2), texts)
    vocab = tok.get_vocab()
    assert {"common", "words", "here"} <= set(vocab)
    assert "rareword" not in vocab
    assert tok.convert_ids_to_tokens(tok("rareword")["input_ids"])[1:-1] == ["[UNK]"]


@pytest.mark.parametrize("template, before, after", [("[CLS] $A [SEP]", 1, 1), ("$A [SEP]", 0, 1),
                                                     ("[CLS] [CLS] $A", 2, 0), (None, 0, 0)])
def test_truncation_layout_finds_the_special_tokens_around_a_text(template, before, after):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from nlp_decouple.tokenization import truncation_layout

    tok = build_tokenizer(TokenizerConfig(train="word", vocab_size=500), TRAIN_TEXTS)
    backend = tok.backend_tokenizer
    specials = [("[CLS]", tok.cls_token_id), ("[SEP]", tok.sep_token_id)]
    backend.post_processor = (processors.TemplateProcessing(single=template, special_tokens=specials) if template
                              else processors.Sequence([]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", truncation_side="left")
    assert truncation_layout(tok) == {"side": "left", "before": before, "after": after}
    # the layout predicts the tokenizer's own truncation: keep `before`, then the text's end, then `after`
    ids = tok("the team was good and the match was great")["input_ids"]
    cut = tok("the team was good and the match was great", truncation=True, max_length=6)["input_ids"]
    assert cut == ids[:before] + ids[len(ids) - 6 + before:]
