"""Encoder blocks: shapes, padding never changes a text's pooled vector, positional encoding, LSTM state."""
from __future__ import annotations

import math

import pytest
import torch

from nlp_decouple.models import BlockGroup, Carry, EmbeddingBlock, LSTMBlock, TransformerBlock, masked_mean

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, PAD, DIM, MAXLEN = 40, 0, 16, 32


def make_stack(kind: str, pooling: str, positional: str = "sinusoidal", layers: int = 2) -> BlockGroup:
    torch.manual_seed(0)
    if kind == "embedding":
        blocks = [EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN, positional)]
    elif kind == "transformer":
        blocks = [EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN, positional)]
        blocks += [TransformerBlock(DIM, 2, 32, dropout=0.0, norm=norm, pooling=pooling)
                   for norm in ("post", "pre")[:layers]]
    else:
        blocks = [EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN, "none"), LSTMBlock(DIM, 12, pooling=pooling)]
        blocks += [LSTMBlock(24, 12, pooling=pooling) for _ in range(layers - 1)]
    return BlockGroup(blocks).eval()


def encode(stack: BlockGroup, ids: torch.Tensor, mask: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """``grad=False`` lets the Transformer take PyTorch's fused inference path; ``True`` the regular one."""
    with torch.set_grad_enabled(grad):
        return stack.pool(stack(Carry(ids, mask))).detach()


def random_ids(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (length,), generator=g)


CASES = [("embedding", "mean"), ("transformer", "mean"), ("transformer", "cls"), ("lstm", "last"), ("lstm", "mean")]


def test_output_shapes():
    b, t = 3, 7
    ids, mask = torch.randint(1, VOCAB, (b, t)), torch.ones(b, t, dtype=torch.bool)
    emb = EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN, "learned")
    c = emb(Carry(ids, mask))
    assert c.hidden.shape == (b, t, DIM) and emb.pool(c).shape == (b, DIM)

    tr = TransformerBlock(DIM, 4, 24, dropout=0.0)
    c2 = tr(c)
    assert c2.hidden.shape == (b, t, DIM) and tr.pool(c2).shape == (b, DIM) == (b, tr.pool_dim)

    for pooling, pool_dim in (("last", 10), ("mean", 20)):
        lstm = LSTMBlock(DIM, 10, pooling=pooling)
        c3 = lstm(c)
        assert c3.hidden.shape == (b, t, 20) and lstm.out_dim == 20
        assert c3.state[0].shape == c3.state[1].shape == (2, b, 10)
        assert lstm.pool(c3).shape == (b, pool_dim) and lstm.pool_dim == pool_dim

    group = BlockGroup([EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN), LSTMBlock(DIM, 10), LSTMBlock(20, 6, pooling="mean")])
    assert group.pool_dim == 12 and group.out_dim == 12
    assert group.pool(group(Carry(ids, mask))).shape == (b, 12)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("kind,pooling", CASES)
def test_appended_padding_does_not_change_the_pooled_vector(kind, pooling, grad):
    stack = make_stack(kind, pooling)
    ids = random_ids(9, seed=1)
    alone = encode(stack, ids[None], torch.ones(1, 9, dtype=torch.bool), grad)
    for extra in (1, 5, 14):
        padded = torch.cat([ids, torch.full((extra,), PAD)])[None]
        mask = torch.cat([torch.ones(9, dtype=torch.bool), torch.zeros(extra, dtype=torch.bool)])[None]
        torch.testing.assert_close(encode(stack, padded, mask, grad), alone, atol=1e-5, rtol=1e-5)
        # padding with a *real* token id (still masked) changes nothing either: only the mask counts
        junk = padded.clone()
        junk[0, 9:] = 7
        torch.testing.assert_close(encode(stack, junk, mask, grad), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("kind,pooling", CASES)
def test_batch_of_different_lengths_matches_each_text_alone(kind, pooling, grad):
    stack = make_stack(kind, pooling)
    lengths = [4, 11, 1, 7]
    texts = [random_ids(n, seed=10 + n) for n in lengths]
    t = max(lengths)
    ids = torch.full((len(texts), t), PAD)
    mask = torch.zeros(len(texts), t, dtype=torch.bool)
    for i, text in enumerate(texts):
        ids[i, : len(text)] = text
        mask[i, : len(text)] = True
    batch = encode(stack, ids, mask, grad)
    for i, text in enumerate(texts):
        alone = encode(stack, text[None], torch.ones(1, len(text), dtype=torch.bool), grad)
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    # the texts differ, so do their vectors (the comparison above is not trivially true)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_masked_mean_reference():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    want = torch.stack([hidden[0, :2].mean(0), hidden[1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), want)


def test_lstm_last_pooling_is_mean_of_final_forward_and_backward_states():
    """Reference: a plain nn.LSTM over the unpadded text; the forward direction ends at the last
    token, the backward direction at the first."""
    torch.manual_seed(0)
    block = LSTMBlock(DIM, 8, pooling="last").eval()
    lengths = [5, 2]
    x = torch.randn(2, 6, DIM)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    with torch.no_grad():
        pooled = block.pool(block(Carry(x, mask)))
        for i, n in enumerate(lengths):
            out, _ = block.lstm(x[i : i + 1, :n])
            h_fwd, h_bwd = out[0, n - 1, :8], out[0, 0, 8:]
            torch.testing.assert_close(pooled[i], (h_fwd + h_bwd) / 2, atol=1e-6, rtol=1e-5)


def _permutation_check(positional: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    stack = BlockGroup([EmbeddingBlock(VOCAB, DIM, PAD, MAXLEN, positional),
                        TransformerBlock(DIM, 2, 32, dropout=0.0, pooling="mean"),
                        TransformerBlock(DIM, 2, 32, dropout=0.0, pooling="mean")]).eval()
    ids = random_ids(10, seed=3)[None]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(1, 10, dtype=torch.bool)
    return encode(stack, ids, mask), encode(stack, ids[:, perm], mask)


def test_without_positional_encoding_the_transformer_ignores_word_order():
    original, permuted = _permutation_check("none")
    torch.testing.assert_close(original, permuted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_with_positional_encoding_word_order_matters(positional):
    original, permuted = _permutation_check(positional)
    assert (original - permuted).abs().max() > 1e-3


def test_sinusoidal_table_values():
    emb = EmbeddingBlock(VOCAB, 8, PAD, MAXLEN, "sinusoidal")
    table = emb.position_table
    for pos in (0, 3, 17):
        for i in range(4):
            angle = pos / (10000 ** (2 * i / 8))
            assert float(table[pos, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-5)
            assert float(table[pos, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-5)


def _state(seed: int, b: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, b, h, generator=g), torch.randn(2, b, h, generator=g)


def test_lstm_state_handoff_uses_the_incoming_state():
    torch.manual_seed(0)
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(2, 5, dtype=torch.bool)
    state = _state(1, 2, 8)
    handoff = LSTMBlock(DIM, 8, state_handoff=True).eval()
    plain = LSTMBlock(DIM, 8, state_handoff=False).eval()
    plain.load_state_dict(handoff.state_dict())
    with torch.no_grad():
        got = handoff(Carry(x, mask, state))
        ref_out, (ref_h, ref_c) = handoff.lstm(x, state)  # reference: nn.LSTM started from (h, c)
        torch.testing.assert_close(got.hidden, ref_out, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.state[0], ref_h, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.state[1], ref_c, atol=1e-6, rtol=1e-5)
        # without the option the incoming state is ignored: a zero start
        ignored = plain(Carry(x, mask, state))
        zero_out, _ = plain.lstm(x)
        torch.testing.assert_close(ignored.hidden, zero_out, atol=1e-6, rtol=1e-5)
        assert (got.hidden - ignored.hidden).abs().max() > 1e-3
        # with the option but no incoming state (first LSTM block): a zero start too
        torch.testing.assert_close(handoff(Carry(x, mask)).hidden, zero_out, atol=1e-6, rtol=1e-5)


def test_lstm_state_handoff_with_padding_starts_each_text_from_its_state():
    torch.manual_seed(0)
    block = LSTMBlock(DIM, 8, state_handoff=True).eval()
    lengths = [3, 6, 5]  # not sorted: packing reorders the batch, the states must follow
    x = torch.randn(3, 6, DIM)
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    state = _state(2, 3, 8)
    with torch.no_grad():
        pooled = block.pool(block(Carry(x, mask, state)))
        for i, n in enumerate(lengths):
            one_state = (state[0][:, i : i + 1].contiguous(), state[1][:, i : i + 1].contiguous())
            out, (h, _) = block.lstm(x[i : i + 1, :n], one_state)
            torch.testing.assert_close(pooled[i], (h[0, 0] + h[1, 0]) / 2, atol=1e-6, rtol=1e-5)


def test_stacked_lstm_blocks_hand_over_the_final_state():
    torch.manual_seed(0)
    first, second = LSTMBlock(DIM, 8).eval(), LSTMBlock(16, 8, state_handoff=True).eval()
    x = torch.randn(3, 4, DIM)
    mask = torch.ones(3, 4, dtype=torch.bool)
    with torch.no_grad():
        c1 = first(Carry(x, mask))
        c2 = second(c1)
        ref, _ = second.lstm(c1.hidden, c1.state)
        torch.testing.assert_close(c2.hidden, ref, atol=1e-6, rtol=1e-5)


def test_transformer_padded_positions_are_zero():
    stack = make_stack("transformer", "mean")
    ids = torch.tensor([[3, 4, 5, 0, 0]])
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        out = stack(Carry(ids, mask)).hidden
    assert torch.count_nonzero(out[0, 3:]) == 0


def test_carry_detach_cuts_gradients_of_hidden_and_state():
    x = torch.randn(2, 3, 4, requires_grad=True)
    state = (x.sum(-1).T[:2].unsqueeze(-1) * 1.0, x.sum(-1).T[:2].unsqueeze(-1) * 2.0)
    carry = Carry(x * 2, torch.ones(2, 3, dtype=torch.bool), state, {"t": x * 3})
    cut = carry.detach()
    assert not cut.hidden.requires_grad and not cut.state[0].requires_grad and not cut.state[1].requires_grad
    assert not cut.extras["t"].requires_grad
    torch.testing.assert_close(cut.hidden, carry.hidden)
