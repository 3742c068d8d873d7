"""The toy base model, its tokenizers and the multiple-choice scorer, on the micro world."""
from __future__ import annotations

import math

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.mcscore import PROMPTS, mc_accuracy, score_choices, split_ids
from lib.toymodel import (BaseModelSpec, build_base_model, load_tokenizer, new_model, pretrain_documents,
                          save_model, train_base_tokenizer)
from lib.toyworld import WorldSpec, build_world, read_jsonl, read_lines, write_world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy00")
    write_world(build_world(WorldSpec.micro()), root)
    return root


@pytest.fixture(scope="module")
def built(world_dir):
    """Micro world + micro base model (~15-20 s on 2 cores)."""
    return world_dir, build_base_model(world_dir, world_dir, BaseModelSpec.micro(), progress=False)


@pytest.fixture(scope="module")
def tok(world_dir, tmp_path_factory):
    """The micro base tokenizer alone (well under a second)."""
    out = tmp_path_factory.mktemp("base_tok")
    train_base_tokenizer(world_dir, out, BaseModelSpec.micro().base_vocab_size)
    return load_tokenizer(out)


@pytest.mark.slow
def test_loss_falls_and_metrics_are_reported(built):
    _, m = built
    curve = m["loss_curve"]
    assert len(curve) == BaseModelSpec.micro().steps
    assert sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5
    assert m["n_questions"] == 60
    # The micro model learns the English facts (1.0 when measured) but not the Korean questions.
    assert m["base_en_accuracy"] >= 0.6 and m["base_ko_accuracy"] <= 0.45
    for key in ("base_en_accuracy", "base_ko_accuracy", "train_seconds", "tokens_per_second", "n_params",
                "final_loss", "ko_tokens_per_char", "en_tokens_per_char"):
        assert m[key] >= 0, key


@pytest.mark.slow
def test_base_tokenizer_splits_korean_into_bytes(built):
    root, m = built
    assert m["ko_tokens_per_char"] >= 1.5 and m["en_tokens_per_char"] < 0.5
    assert m["korean_tokenizer_ko_tokens_per_char"] < 1.0   # the Korean model has real Korean pieces
    sp = spm.SentencePieceProcessor(model_file=str(root / "base_tokenizer/tokenizer.model"))
    assert sp.id_to_piece(sp.encode("빵")[-1]).startswith("<0x")


@pytest.mark.slow
def test_saved_folder_loads_like_a_hub_model(built, tok):
    root, m = built
    folder = root / "model"
    assert (folder / "tokenizer.model").exists() and not (root / "model.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(folder)
    hub_tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.config.tie_word_embeddings
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for line in read_lines(root / "data/sample.ko")[:20] + read_lines(root / "data/sample.en")[:20]:
        assert hub_tok(line)["input_ids"] == [1] + sp.encode(line)
    # The reloaded weights give the accuracy measured before saving.
    again = mc_accuracy(model, hub_tok, root / "eval/arc_en.jsonl", "en")
    assert again["acc"] == m["base_en_accuracy"]


def test_save_and_reload_give_identical_logits(tok, tmp_path):
    torch.manual_seed(0)
    model = new_model(BaseModelSpec.micro(), len(tok)).eval()
    save_model(model, tok, tok.vocab_file, tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = tok(["민수는 지호와 만났다.", "Minsu met Jiho."], padding=False)["input_ids"]
    for seq in ids:
        x = torch.tensor([seq])
        torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)


def test_pretrain_documents_keep_question_and_answer_together():
    lines = ["Minsu lives in Busan.", "Question: Where does Minsu live?", "Answer: Busan", "Jiho met Minsu."]
    assert pretrain_documents(lines) == ["Minsu lives in Busan.", "Question: Where does Minsu live?\nAnswer: Busan",
                                         "Jiho met Minsu."]


def uniform_model(vocab: int) -> torch.nn.Module:
    """A model whose next-token distribution is uniform: lm_head all zeros."""
    torch.manual_seed(0)
    model = new_model(BaseModelSpec.micro(), vocab).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_uniform_model_scores_are_minus_log_vocab_per_token(tok):
    model = uniform_model(len(tok))
    prompt = PROMPTS["en"].format(q="Where does Minsu live?")
    choices = ["Busan", "Seoul", "Chuncheon", "부산"]
    n_tokens = [len(split_ids(tok, prompt, " " + c)[1]) for c in choices]
    logv = math.log(len(tok))
    sums = score_choices(model, tok, prompt, choices)
    per_token = score_choices(model, tok, prompt, choices, normalize="tokens")
    per_char = score_choices(model, tok, prompt, choices, normalize="chars")
    for s, n, t, c, choice in zip(sums, n_tokens, per_token, per_char, choices):
        assert s == pytest.approx(-n * logv, rel=1e-5)
        assert t == pytest.approx(s / n) == pytest.approx(-logv, rel=1e-5)
        assert c == pytest.approx(s / len(" " + choice))
    assert n_tokens[3] > n_tokens[0]      # Korean falls apart into bytes


def test_model_that_prefers_some_tokens_picks_that_choice(tok):
    """Layers silenced, every embedding = e0: logits = lm_head[:, 0] * sqrt(d), the same at every step.
    Raising lm_head[:, 0] for the tokens of ' Seoul' makes it the winner whatever the prompt."""
    model = uniform_model(len(tok))
    prompt = PROMPTS["en"].format(q="Where does Jiho live?")
    seoul = split_ids(tok, prompt, " Seoul")[1]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[seoul, 0] = 1.0
    scores = score_choices(model, tok, prompt, ["Busan", "Seoul", "Daegu", "Incheon"])
    assert max(range(4), key=scores.__getitem__) == 1


def test_split_ids_scores_what_follows_the_shared_prefix(tok):
    for prompt, cont in [("Question: Where?\nAnswer:", " Busan"), ("질문: 어디?\n정답:", " 부산"),
                         ("Answer: Bu", "san")]:          # the last one merges across the boundary
        ctx, tail = split_ids(tok, prompt, cont)
        assert ctx + tail == tok(prompt + cont)["input_ids"] and tail
    with pytest.raises(ValueError, match="adds no token"):
        split_ids(tok, "Answer:", "")


def test_mc_accuracy_reads_arc_rows_and_pairs_ids(world_dir, tok, tmp_path):
    root = world_dir
    model = uniform_model(len(tok))
    res = mc_accuracy(model, tok, root / "eval/arc_ko.jsonl", "ko", limit=8)
    assert res["n"] == 8 and len(res["samples"]) == 8 and 0 <= res["acc"] <= 1
    assert [s["id"] for s in res["samples"]] == [r["id"] for r in read_jsonl(root / "eval/arc_ko.jsonl")[:8]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        mc_accuracy(model, tok, bad, "en")
