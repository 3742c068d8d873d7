"""Resizing to the merged vocab keeps the base model's behaviour exactly."""
from __future__ import annotations

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from transformers import AutoModelForCausalLM, AutoTokenizer

import lib.modeling.model as M
import lib.vocab.merge as T
from lib.vocab import resize as R


@pytest.fixture(scope="module")
def merged(tiny_assets, tmp_path_factory):
    sp, _ = T.merge_sp(T.load_sp_model(tiny_assets["base_sp"]), T.load_sp_model(tiny_assets["ko_sp"]), "all")
    out = tmp_path_factory.mktemp("merged") / "tokenizer"
    T.save_merged(sp, out)
    return AutoTokenizer.from_pretrained(out), out


def fresh(tiny_assets, tie=False):
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], tie_word_embeddings=tie)
    if tie:
        model.tie_weights()
    return model.eval(), AutoTokenizer.from_pretrained(tiny_assets["model"])


@pytest.mark.parametrize("init", R.INIT_METHODS)
def test_base_rows_and_english_logits_unchanged(tiny_assets, merged, init):
    model, base_tok = fresh(tiny_assets)
    merged_tok, _ = merged
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    probe = M.english_probe(base_tok, EN_LINES[:6])
    before = M.logits_for(model, probe)
    info = R.resize_and_init(model, base_tok, merged_tok, init=init)
    n = info["base_vocab"]
    assert info["new_vocab"] == len(merged_tok) > n
    assert model.get_input_embeddings().weight.shape[0] == len(merged_tok)
    assert torch.equal(model.get_input_embeddings().weight[:n], emb0)
    assert torch.equal(model.get_output_embeddings().weight[:n], head0)
    assert torch.equal(M.logits_for(model, probe)[..., :n], before)
    new = model.get_input_embeddings().weight[n:]
    assert torch.isfinite(new).all() and new.abs().sum() > 0


def test_subword_mean_is_the_mean_of_the_decomposition(tiny_assets, merged):
    model, base_tok = fresh(tiny_assets)
    merged_tok, _ = merged
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    info = R.resize_and_init(model, base_tok, merged_tok, init="subword_mean")
    n = info["base_vocab"]
    for new_id in (n, n + 3, len(merged_tok) - 1):
        piece = merged_tok.convert_ids_to_tokens(new_id)
        ids = [t.id for t in base_tok.backend_tokenizer.model.tokenize(piece)]
        assert len(ids) >= 2, piece          # a Korean piece falls apart into base bytes
        torch.testing.assert_close(model.get_input_embeddings().weight[new_id], emb0[ids].mean(0))
        torch.testing.assert_close(model.get_output_embeddings().weight[new_id], head0[ids].mean(0))


def test_mean_init_and_tied_head(tiny_assets, merged):
    model, base_tok = fresh(tiny_assets, tie=True)
    merged_tok, _ = merged
    emb0 = model.get_input_embeddings().weight.detach().clone()
    info = R.resize_and_init(model, base_tok, merged_tok, init="mean")
    assert info["tied"] is True
    w = model.get_input_embeddings().weight
    torch.testing.assert_close(w[info["base_vocab"]:], emb0.mean(0).expand(info["added_rows"], -1))
    assert model.get_output_embeddings().weight.data_ptr() == w.data_ptr()


def test_vocab_mismatch_and_bad_init_are_clear_errors(tiny_assets, merged):
    model, base_tok = fresh(tiny_assets)
    merged_tok, _ = merged
    with pytest.raises(ValueError, match="init must be one of"):
        R.resize_and_init(model, base_tok, merged_tok, init="zeros")
    model.resize_token_embeddings(len(base_tok) + 5)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        R.resize_and_init(model, base_tok, merged_tok)


def test_save_and_reload_give_identical_logits(tiny_assets, merged, tmp_path):
    model, base_tok = fresh(tiny_assets)
    merged_tok, tok_dir = merged
    R.resize_and_init(model, base_tok, merged_tok)
    out = M.save_model(model, merged_tok, tmp_path / "m", sp_model=tok_dir / "tokenizer.model")
    assert (out / "tokenizer.model").exists()
    reloaded, tok2 = M.load_model(str(out), device="cpu")
    probe = M.english_probe(tok2, KO_LINES[:4] + EN_LINES[:2])
    assert torch.equal(M.logits_for(reloaded, probe), M.logits_for(model, probe))
    assert tok2(KO_LINES[0])["input_ids"] == merged_tok(KO_LINES[0])["input_ids"]
    with pytest.raises(FileExistsError):
        M.save_model(model, merged_tok, out)


def test_text_nll_bits_per_char_is_consistent(tiny_assets):
    model, tok = fresh(tiny_assets)
    r = M.text_nll(model, tok, EN_LINES[:5])
    assert r["tokens"] == sum(len(tok(t)["input_ids"]) - 1 for t in EN_LINES[:5])
    # a random model is near-uniform: perplexity close to the vocab size
    assert 0.3 * len(tok) < r["ppl"] < 3 * len(tok)
