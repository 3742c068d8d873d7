"""Sentence vectors (encoding, pooling, layer choice) and alignment metrics, on hand-made numbers
and on a tiny random Llama with a tiny SentencePiece tokenizer built here (~1 s)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from torch.testing import assert_close
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lib.modeling.represent import (
    LayerWeights,
    alignment_report,
    all_layer_vectors,
    embed_texts,
    encode_batch,
    nonpair_cosine,
    pair_cosines,
    pool,
    pooled_vectors,
    retrieval_p1,
    sentence_vectors,
)
from lib.vocab.sptrain import train_sentencepiece

TEXTS = ["The cat sees the apple near the school on day 3.", "개가 강을 본다", "",
         "The dog likes the river.", "농부가 사과를 좋아한다 시장에서 12일에.", "The farmer"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rep_sp")
    train_sentencepiece(EN_LINES + KO_LINES[:2], folder / "tokenizer.model", 330, hard_vocab_limit=False)
    return AutoTokenizer.from_pretrained(folder, add_bos_token=True)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


# ---- encode_batch ----

def test_encode_batch_bos_right_padding_and_truncation(tok):
    b = encode_batch(tok, ["The cat sees the apple.", "The", ""], max_len=64)
    ids, mask = b["input_ids"], b["attention_mask"]
    lengths = [len(tok("The cat sees the apple.")["input_ids"]), len(tok("The")["input_ids"]), 1]
    assert mask.sum(1).tolist() == lengths and ids.shape == (3, lengths[0])
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert (ids[mask == 0] == 0).all() and mask[1, : lengths[1]].all() and not mask[1, lengths[1]:].any()
    truncated = encode_batch(tok, ["The cat sees the apple near the school."], max_len=4)
    assert truncated["input_ids"].shape == (1, 4)
    assert tok.pad_token is None  # the tokenizer was not modified


def test_encode_batch_adds_missing_bos():
    class NoBos:  # a tokenizer loaded with add_bos_token=False
        bos_token_id = 1

        def __call__(self, texts, **kw):
            return {"input_ids": [[5 + len(t)] * len(t) for t in texts]}

    b = encode_batch(NoBos(), ["ab", "c"], max_len=8)
    assert b["input_ids"].tolist() == [[1, 7, 7], [1, 6, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


# ---- pool ----

HIDDEN = torch.tensor([[[100., 100.], [1., 2.], [3., 4.], [50., 50.]],    # 3 tokens + 1 pad
                       [[100., 100.], [5., 7.], [60., 60.], [70., 70.]],  # 2 tokens + 2 pads
                       [[100., 200.], [80., 80.], [90., 90.], [99., 99.]]])  # BOS only
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])


def test_mean_pool_excludes_bos_and_pads():
    assert_close(pool(HIDDEN, MASK, "mean"), torch.tensor([[2., 3.], [5., 7.], [100., 200.]]))
    assert_close(pool(HIDDEN, MASK, "mean", exclude_bos=False),
                 torch.tensor([[104 / 3, 106 / 3], [52.5, 53.5], [100., 200.]]))


def test_last_pool_picks_last_real_token():
    assert_close(pool(HIDDEN, MASK, "last"), torch.tensor([[3., 4.], [5., 7.], [100., 200.]]))


def test_pool_rejects_bad_masks_and_modes():
    with pytest.raises(ValueError, match="right-padded"):
        pool(HIDDEN, torch.tensor([[0, 1, 1, 1]] * 3))
    with pytest.raises(ValueError, match="all zeros"):
        pool(HIDDEN, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="pooling must be"):
        pool(HIDDEN, MASK, "max")


# ---- LayerWeights and layer choice ----

def test_layer_weights_uniform_at_init_and_trainable():
    lw = LayerWeights(1, 3)
    assert_close(lw.weights(), torch.full((3,), 1 / 3))
    hs = [torch.full((2, 4), float(i)) for i in range(5)]  # layer i holds the value i
    assert_close(lw(hs), torch.full((2, 4), 2.0))  # uniform mean of 1, 2, 3
    opt = torch.optim.SGD(lw.parameters(), lr=0.1)
    lw(hs).sum().backward()  # descending on the sum moves weight to layer 1, the smallest value
    assert lw.logits.grad is not None and lw.logits.grad.abs().sum() > 0
    opt.step()
    w = lw.weights().detach()
    assert_close(w.sum(), torch.tensor(1.0))
    assert w[0] > 1 / 3 > w[2]
    assert_close(lw(hs).detach(), torch.full((2, 4), float(w @ torch.tensor([1., 2., 3.]))))
    with pytest.raises(ValueError):
        LayerWeights(2, 1)
    with pytest.raises(ValueError, match="only 3 hidden states"):
        lw(hs[:3])


def test_pooled_vectors_layer_choice():
    g = torch.Generator().manual_seed(0)
    hs = tuple(torch.randn(3, 4, 2, generator=g) for _ in range(4))
    assert_close(pooled_vectors(hs, MASK), pool(hs[3], MASK))  # default: last layer
    assert_close(pooled_vectors(hs, MASK, layer=-2, pooling="last"), pool(hs[2], MASK, "last"))
    assert_close(pooled_vectors(hs, MASK, layer_range=(1, 2)), (pool(hs[1], MASK) + pool(hs[2], MASK)) / 2)
    lw = LayerWeights(0, 2)
    with torch.no_grad():
        lw.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    # Weighting pooled vectors equals pooling the weighted hidden states (pooling is linear).
    assert_close(pooled_vectors(hs, MASK, layer_weights=lw), pool(lw(hs), MASK))
    with pytest.raises(ValueError, match="at most one"):
        pooled_vectors(hs, MASK, layer=1, layer_weights=lw)
    with pytest.raises(ValueError, match="out of range"):
        pooled_vectors(hs, MASK, layer=4)


# ---- alignment metrics ----

def test_retrieval_p1_one_swapped_pair():
    en = torch.eye(3)
    ko = torch.tensor([[2., 0., 0.], [0., 1., 0.], [0., 1., 0.1]])  # ko[2] lands nearest en[1]
    assert retrieval_p1(ko, en) == pytest.approx(2 / 3)
    assert retrieval_p1(en, ko) == pytest.approx(1.0)  # en[1] -> ko[1] (cos 1 > 0.995), en[2] -> ko[2]


def test_pair_and_nonpair_cosine_and_report():
    ko = torch.tensor([[1., 0.], [0., 3.]])
    en = torch.tensor([[2., 0.], [2., 1.]])
    r = 1 / math.sqrt(5)  # cosine matrix (rows ko, columns en) [[1, 2r], [0, r]]
    assert_close(pair_cosines(ko, en), torch.tensor([1.0, r]))
    assert nonpair_cosine(ko, en) == pytest.approx(r)  # (2r + 0) / 2
    report = alignment_report(ko, en)
    # ko -> en: both rows peak on the diagonal; en -> ko: column 1 peaks at ko[0] (2r > r).
    assert report == pytest.approx({"pair_cos": (1 + r) / 2, "nonpair_cos": r, "gap": (1 - r) / 2,
                                    "p1_ko2en": 1.0, "p1_en2ko": 0.5})
    with pytest.raises(ValueError, match="same shape"):
        alignment_report(ko, en[:1])


# ---- on a tiny Llama ----

@pytest.mark.parametrize("kw", [dict(), dict(pooling="last"), dict(layer=1), dict(layer_range=(0, 2)),
                                dict(layer_weights=LayerWeights(1, 2))])
def test_padding_does_not_leak(model, tok, kw):
    batched = embed_texts(model, tok, TEXTS, batch_size=8, **kw)  # one batch, padded to the longest
    assert batched.shape == (len(TEXTS), 32)
    for i, text in enumerate(TEXTS):
        assert_close(embed_texts(model, tok, [text], **kw)[0], batched[i], atol=1e-5, rtol=1e-5)


def test_all_layer_vectors_shape_and_agreement(model, tok):
    per_layer = all_layer_vectors(model, tok, TEXTS, batch_size=4)
    assert per_layer.shape == (3, len(TEXTS), 32)
    for layer in range(3):
        assert_close(per_layer[layer], embed_texts(model, tok, TEXTS, layer=layer, batch_size=2))
    assert not torch.allclose(per_layer[0], per_layer[2])


def test_sentence_vectors_match_plain_forward_and_carry_gradient(model, tok):
    batch = encode_batch(tok, TEXTS[:4], max_len=64)
    lw = LayerWeights(1, 2)
    model.train()
    try:
        vecs = sentence_vectors(model, batch, layer_weights=lw)
        ref = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"]
        assert_close(vecs, 0.5 * (pool(ref[1], mask) + pool(ref[2], mask)))
        vecs.pow(2).sum().backward()
        assert lw.logits.grad.abs().sum() > 0
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0
        embed_texts(model, tok, TEXTS[:1])
        assert model.training  # evaluation restored the caller's mode
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
