"""The toy base model, its tokenizers and the multiple-choice scorer, on the micro world."""
from __future__ import annotations

import math

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.core.prompts import QA_PROMPTS as PROMPTS
from lib.modeling.mcscore import mc_accuracy, score_choices, split_ids
from lib.world import WorldSpec, build_world, file_lines, read_jsonl, write_world
from lib.world.basemodel import (
    BaseModelSpec,
    build_base_model,
    load_tokenizer,
    new_model,
    pretrain_documents,
    save_model,
    train_base_tokenizer,
)


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
    # Every cell is scored in both languages. The micro model is too small to answer questions it
    # never saw asked (the toy profile's reaches 0.96 on knowledge); its Korean is near chance.
    assert {c: v["n"] for c, v in m["cells"].items()} == {"knowledge": 60, "bridge_heldout": 24, "ghost": 30}
    assert m["base_en_accuracy"] == m["cells"]["knowledge"]["en"] and m["base_ko_accuracy"] <= 0.45
    for key in ("base_en_accuracy", "base_ko_accuracy", "train_seconds", "tokens_per_second", "n_params",
                "final_loss", "ko_tokens_per_char", "en_tokens_per_char"):
        assert m[key] >= 0, key


@pytest.mark.slow
def test_every_clone_word_is_one_token_and_options_match_the_text(built):
    """Rule 3 and the oracle's premise: on the clone world every English word of the questions is
    one base piece, every Korean word one Korean piece, and options tokenize as in the text."""
    from lib.world import option_match
    root, _ = built
    r = option_match(root, root / "base_tokenizer/tokenizer.model", root / "korean_tokenizer/tokenizer.model")
    assert r["option_match_rate"]["en"] == 1.0 and r["option_match_rate"]["ko"] == 1.0
    assert r["option_match_rate"]["ko_mentions"] > 100
    base = spm.SentencePieceProcessor(model_file=str(root / "base_tokenizer/tokenizer.model"))
    ko = spm.SentencePieceProcessor(model_file=str(root / "korean_tokenizer/tokenizer.model"))
    for lang, sp in (("en", base), ("ko", ko)):
        for q in read_jsonl(root / f"eval/knowledge_{lang}.jsonl"):
            words = q["question"].rstrip("?").split() + q["choices"]["text"]
            assert all(len(sp.encode(w)) == 1 for w in words), (lang, [w for w in words if len(sp.encode(w)) != 1])


@pytest.mark.slow
def test_toy_korean_options_sometimes_differ_from_the_text(tmp_path):
    """The realistic toy Korean glues particles to names (부산에), so some mentions tokenize unlike
    the option (about 0.4 before the entity forms joined the tokenizer corpus; ~0.9 now)."""
    from lib.world import option_match
    from lib.world.basemodel import train_korean_tokenizer
    write_world(build_world(WorldSpec.micro(korean_style="toy")), tmp_path)
    train_base_tokenizer(tmp_path, tmp_path / "b", BaseModelSpec.micro().base_vocab_size)
    train_korean_tokenizer(tmp_path, tmp_path / "k", 800, "unigram")
    r = option_match(tmp_path, tmp_path / "b/tokenizer.model", tmp_path / "k/tokenizer.model")["option_match_rate"]
    assert r["en"] == 1.0 and 0.5 < r["ko"] < 1.0


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
    for line in file_lines(root / "data/sample.ko")[:20] + file_lines(root / "data/sample.en")[:20]:
        assert hub_tok(line)["input_ids"] == [1] + sp.encode(line)
    # The reloaded weights give the accuracy measured before saving.
    again = mc_accuracy(model, hub_tok, root / "eval/knowledge_en.jsonl", "en")
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
    ko = ["질문: 민수 어디?", "정답: 부산", "정답: 서울", "Question: x?"]     # a lone answer or question stays a line
    assert pretrain_documents(ko) == ["질문: 민수 어디?\n정답: 부산", "정답: 서울", "Question: x?"]


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
    res = mc_accuracy(model, tok, root / "eval/knowledge_ko.jsonl", "ko", limit=8)
    assert res["n"] == 8 and len(res["samples"]) == 8 and 0 <= res["acc"] <= 1
    assert [s["id"] for s in res["samples"]] == [r["id"] for r in read_jsonl(root / "eval/knowledge_ko.jsonl")[:8]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        mc_accuracy(model, tok, bad, "en")
