"""Stage 06 (instruction tuning) and lib.train.chatvector, on tiny random Llamas built here."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lib.core.params import notebook_params
from lib.core.stage import resolve
from lib.data import instructions as ins
from lib.modeling.losses import IGNORE_INDEX
from lib.train import sft
from lib.train.chatvector import apply_chat_vector, chat_vector

STAGE = "06_instruction_tuning"
SYS = "You are a helpful assistant. 당신은 유능한 AI 어시스턴트 입니다."


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def write_records(path, n=24):
    """n English and n Korean records: 'which sentence is number i' -> that sentence."""
    rows = [{"instruction": f"Which sentence is number {i}?", "input": "", "output": EN_LINES[i], "lang": "en"}
            for i in range(n)]
    rows += [{"instruction": f"{i}번 문장은 무엇입니까?", "input": "", "output": KO_LINES[i]} for i in range(n)]
    rows.append({"instruction": "Repeat the sentence.", "input": EN_LINES[40], "output": EN_LINES[40], "lang": "en"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_cfg(tmp_path, assets, **overrides):
    ns = {k: p.default for k, p in notebook_params(STAGE).items()}
    ns.update(run=str(tmp_path / "run"), init_from=str(assets["model"]),
              data_files=[str(write_records(tmp_path / "inst.jsonl"))], eval_examples=8, max_len=96,
              batch_size=8, steps=12, warmup_steps=2, lr=1e-2, eval_every=6, save_every=6,
              report_to="none", max_new_tokens=6,
              # a short template: the default's system prompt is ~130 byte tokens for this tokenizer
              prompt_template="{system} Q: {instruction} A:", turn_template="Q: {instruction} A:",
              system_prompt="Answer.")
    ns.update(overrides)
    return resolve(STAGE, ns)


# ----------------------------------------------------------------------------- template and labels

def test_template_renders_input_and_history():
    t = ins.Template()
    rec = {"instruction": "Translate.", "input": "Minsu lives in Busan.", "output": " 민수는 부산에 산다. ",
           "history": [["Hi", "Hello!"], ["Who are you?", "An assistant."]]}
    assert t.render(rec) == (
        f"<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nHi [/INST] Hello!</s>"
        "<s>[INST] Who are you? [/INST] An assistant.</s>"
        "<s>[INST] Translate.\nMinsu lives in Busan. [/INST] 민수는 부산에 산다.</s>")
    assert t.generation_prompt("Q?") == f"[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nQ? [/INST]"
    custom = ins.Template(prompt="### {system}\n### User: {instruction}\n### Bot:", system="S", input_sep=" | ")
    assert custom.generation_prompt("a {b}", "c") == "### S\n### User: a {b} | c\n### Bot:"
    with pytest.raises(ValueError, match="instruction"):
        ins.Template(prompt="no slot")


def test_label_mask_on_a_known_example(tiny_assets):
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    rec = {"instruction": "The cat sees", "input": "the river", "output": "near the school.", "lang": "en"}
    (ex,), rep = ins.encode(tok, [rec], ins.Template(), max_len=512)
    prompt = tok(f"[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nThe cat sees\nthe river [/INST]",
                 add_special_tokens=False)["input_ids"]
    answer = tok("near the school.", add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ex.ids == [bos] + prompt + answer + [eos]
    assert ins.labels_of(ex) == [IGNORE_INDEX] * (1 + len(prompt)) + answer + [eos]
    assert tok.decode([t for t in ins.labels_of(ex) if t != IGNORE_INDEX], skip_special_tokens=True) == "near the school."
    assert sft.show_example(tok, ex).endswith("[/INST][[ near the school.</s>]]")  # the space is the answer's first token
    # this tokenizer's dummy prefix makes separate segments equal the joint string with a space
    assert ins.boundary_check(tok, [rec], ins.Template())["share"] == 1.0
    # padding gets -100 too
    short = ins.Example([bos, 7, 8, eos], [0, 0, 1, 1], "en")
    b = ins.collate([ex, short], pad_id=0)
    assert b["labels"][1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 8, eos] + [IGNORE_INDEX] * (len(ex.ids) - 4)
    assert b["attention_mask"][1].sum() == 4 and b["labels"][0].tolist() == ins.labels_of(ex)


def test_history_answers_learned_or_not_and_truncation(tiny_assets):
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    rec = {"instruction": "Two", "input": "", "output": "the house", "history": [["One", "the apple"]], "lang": "en"}
    (on,), _ = ins.encode(tok, [rec], ins.Template(), 512, loss_on_history=True)
    (off,), _ = ins.encode(tok, [rec], ins.Template(), 512, loss_on_history=False)
    apple, house = (tok(x, add_special_tokens=False)["input_ids"] for x in ("the apple", "the house"))
    learned = lambda ex: [t for t in ins.labels_of(ex) if t != IGNORE_INDEX]
    assert learned(on) == apple + [tok.eos_token_id] + house + [tok.eos_token_id]
    assert learned(off) == house + [tok.eos_token_id]
    assert on.ids.count(tok.bos_token_id) == 2
    n_prompt = on.mask.index(1)
    exs, rep = ins.encode(tok, [rec, rec], ins.Template(), n_prompt + 1)
    assert rep == {"truncated": 2, "dropped_too_long": 0} and len(exs[0].ids) == n_prompt + 1
    exs, rep = ins.encode(tok, [rec], ins.Template(), n_prompt)
    assert exs == [] and rep["dropped_too_long"] == 1


def test_records_json_jsonl_errors_and_language(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps([{"instruction": "민수는 어디에 살아요?", "output": "부산"},
                                {"instruction": "Where?", "input": "x", "output": "y", "history": None}]))
    recs = ins.read_records(good)
    assert [r["lang"] for r in recs] == ["ko", "en"] and recs[0]["input"] == ""
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: 'output' must be a string"):
        ins.read_records(bad)
    bad.write_text('{"instruction": "a", "output": "b", "history": [["only one"]]}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:1: 'history'"):
        ins.read_records(bad)
    recs, rep = ins.load_instructions([good], ["ko"])
    assert len(recs) == 1 and rep["dropped_language"] == 1 and rep["detected_lang"] == 2
    assert ins.detect_lang("Python에서 리스트를 정렬하는 방법은?") == "ko" and ins.detect_lang("Hello 안") == "en"


def test_stream_mixes_by_share_is_deterministic_and_splits_over_ranks():
    exs = [ins.Example([1, i, 2], [0, 1, 1], "ko") for i in range(5)]
    exs += [ins.Example([1, 100 + i, 7, 2], [0, 1, 1, 1], "en") for i in range(30)]
    ratios = sft.language_ratios({"ko": 5, "en": 30}, 0.25)
    assert ratios == {"ko": 0.25, "en": 0.75}
    s = sft.InstructionStream(exs, ratios, batch_size=8, grad_accum=2, seed=3, pad_id=0)
    for step in range(6):
        for micro in range(2):
            rows = s.examples(step, micro)
            assert sum(e.lang == "ko" for e in rows) == 2
            assert torch.equal(s.batch(step, micro)["input_ids"], s.batch(step, micro)["input_ids"])
            halves = s.examples(step, micro, 0, 2) + s.examples(step, micro, 1, 2)
            assert sorted(id(e) for e in halves) == sorted(id(e) for e in rows)
    st = s.stats(6)
    assert st["ko"]["rows"] == 24 and st["ko"]["epochs"] == pytest.approx(24 / 5)
    assert sft.language_ratios({"ko": 5}, 0.3) == {"ko": 1.0}
    assert sft.language_ratios({"ko": 5, "en": 10, "ja": 30}, 0.5) == {"ko": 0.5, "en": 0.125, "ja": 0.375}


def test_lima_loads(shared_data):
    recs = ins.read_records(shared_data / "sft" / "lima_en.json")
    assert len(recs) == 1029
    assert sum(bool(r["history"]) for r in recs) == 29
    assert {r["lang"] for r in recs} == {"en"}


# ----------------------------------------------------------------------------- training

@pytest.mark.slow
def test_sft_full_loss_falls_and_records_generations(tmp_path, tiny_assets):
    cfg = make_cfg(tmp_path, tiny_assets)
    m = sft.run(cfg)
    assert m["loss"]["last"] < 0.7 * m["loss"]["first"]
    assert m["heldout_loss"]["after"]["loss"] < m["heldout_loss"]["before"]["loss"]
    assert set(m["heldout_loss"]["after"]) == {"loss", "loss_ko", "loss_en"}
    assert m["data"]["records"] == 49 and m["data"]["train_examples"] == 41 and m["data"]["heldout_examples"] == 8
    assert m["stream"]["ko"]["realised_ratio"] == 0.5
    assert [c.split("/")[-1] for c in m["checkpoints"]] == ["step-000006", "step-000012"]
    assert m["curves"]["eval_step"] == [0, 6, 12]
    assert m["params_trainable"] == m["params_total"]
    gens = m["generations"]
    assert [g["lang"] for g in gens] == ["ko", "en", "en"] and gens[2]["reference"] == EN_LINES[40]
    assert all(isinstance(g["before"], str) and isinstance(g["after"], str) for g in gens)
    em = m["exact_match"]
    assert em["heldout"]["after"]["n"] == 8 and em["train"]["before"]["n"] == 40
    assert set(em["train"]["after"]) == {"all", "n", "ko", "en"}
    AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model")
    assert (cfg.stage_dir / "model" / "tokenizer.model").exists()
    # the saved tokenizer carries the template: a reloaded one renders the trained ids
    assert m["chat_template"] == {"records": 41, "exact": 41, "share": 1.0}
    tok = AutoTokenizer.from_pretrained(cfg.stage_dir / "model")
    rec = ins.read_records(cfg.data_files[0])[0]
    from lib.data.chattemplate import messages_of
    (ex,), _ = ins.encode(tok, [rec], ins.template_from(cfg), 10**6)
    got = tok.apply_chat_template(messages_of(rec, cfg.system_prompt), tokenize=True, return_dict=True)["input_ids"]
    assert list(got) == ex.ids


@pytest.mark.slow
def test_sft_lora_trains_adapters_and_keeps_norms(tmp_path, tiny_assets):
    cfg = make_cfg(tmp_path, tiny_assets, method="lora", steps=4, save_every=0, eval_examples=0,
                   lora_r=4, lora_alpha=8, match_examples=0)
    m = sft.run(cfg)
    assert 0 < m["params_trainable"] < m["params_total"]
    start = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict()
    after = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model").state_dict()
    assert set(start) == set(after)
    for k, v in start.items():
        if "norm" in k:
            assert torch.equal(v, after[k]), k            # no adapter, not in modules_to_save
        elif any(s in k for s in ("q_proj", "down_proj", "embed_tokens", "lm_head")):
            assert not torch.equal(v, after[k]), k        # merged adapters / fully trained
    assert (cfg.stage_dir / "checkpoints" / "step-000004" / "adapter").is_dir()
    assert m["heldout_loss"] == {"before": None, "after": None} and m["exact_match"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after", "before"])
def test_sft_with_chat_vector(tmp_path, tiny_assets, when):
    """A smaller-vocab English pair: its vector lands on the shared rows only."""
    conf = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).config
    n = conf.vocab_size - 30
    pair = {}
    for name, seed in (("base", 1), ("instruct", 2)):
        torch.manual_seed(seed)
        LlamaForCausalLM(LlamaConfig(**{**conf.to_dict(), "vocab_size": n})).save_pretrained(tmp_path / name)
        pair[name] = str(tmp_path / name)
    cfg = make_cfg(tmp_path, tiny_assets, steps=2, save_every=0, eval_examples=0, chat_vector_when=when, match_examples=0,
                   chat_vector_base=pair["base"], chat_vector_instruct=pair["instruct"], chat_vector_weight=0.5)
    m = sft.run(cfg)
    cv = m["chat_vector"]
    assert cv["when"] == when and cv["partial"] == 2 and cv["skipped"] == 0 and cv["unused"] == 0
    if when == "after":      # the last checkpoint is the SFT result without the vector
        without, with_ = cfg.stage_dir / "checkpoints" / "step-000002" / "model", cfg.stage_dir / "model"
    else:                    # the vector goes into the starting model, which is then tuned
        without, with_ = tiny_assets["model"], cfg.stage_dir / "start_with_chat_vector"
    without, with_ = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (without, with_))
    b, i = (AutoModelForCausalLM.from_pretrained(pair[k]).state_dict() for k in ("base", "instruct"))
    for w in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"):
        torch.testing.assert_close(with_[w][:n], without[w][:n] + 0.5 * (i[w][:n] - b[w][:n]), rtol=0, atol=1e-6)
    assert torch.equal(with_["lm_head.weight"][n:], without["lm_head.weight"][n:])
    column = "sft_only" if when == "after" else "chat_vector_only"
    assert all(column in g for g in m["generations"])


# ----------------------------------------------------------------------------- chat vector

def tiny_llama(vocab: int, seed: int, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie))


def test_chat_vector_arithmetic_with_a_larger_vocab():
    base, inst, model = tiny_llama(40, 1), tiny_llama(40, 2), tiny_llama(50, 3)
    b, i, m0 = base.state_dict(), inst.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    vec = chat_vector(b, i)
    assert set(vec) == set(b) and all(torch.equal(vec[k], i[k] - b[k]) for k in vec)
    rep = apply_chat_vector(model, vec, weight=0.5)
    after = model.state_dict()
    assert sorted(p["name"] for p in rep["partial"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all(p["rows"] == 40 and p["of"] == 50 for p in rep["partial"])
    assert rep["skipped"] == [] and rep["unused"] == []
    for k in m0:
        if k in ("lm_head.weight", "model.embed_tokens.weight"):
            assert torch.equal(after[k][:40], m0[k][:40] + 0.5 * (i[k][:40] - b[k][:40]))
            assert torch.equal(after[k][40:], m0[k][40:])              # new rows get nothing
        else:
            assert torch.equal(after[k], m0[k] + 0.5 * (i[k] - b[k])), k
    assert rep["params_changed"] == sum(v.numel() for v in b.values())


def test_chat_vector_skip_policies_tied_weights_and_inplace():
    base, inst = tiny_llama(40, 1), tiny_llama(40, 2)
    vec = chat_vector(base.state_dict(), inst.state_dict())
    model = tiny_llama(50, 3)
    m0 = {k: v.clone() for k, v in model.state_dict().items()}
    rep = apply_chat_vector(model, vec, 1.0, rows="skip", skip=("mlp",))
    skipped = {s["name"]: s["reason"] for s in rep["skipped"]}
    assert skipped["lm_head.weight"].startswith("row count differs") and "model.embed_tokens.weight" in skipped
    assert all(skipped[k] == "excluded by skip" for k in skipped if ".mlp." in k)
    for k, v in model.state_dict().items():
        assert torch.equal(v, m0[k] if k in skipped else m0[k] + vec[k]), k
    assert not torch.equal(vec["model.layers.0.self_attn.q_proj.weight"], torch.zeros(16, 16))
    # tied embeddings: the shared tensor moves once, not twice
    tb, ti, tm = tiny_llama(40, 1, tie=True), tiny_llama(40, 2, tie=True), tiny_llama(40, 3, tie=True)
    e0 = tm.model.embed_tokens.weight.clone()
    tvec = chat_vector(tb.state_dict(), ti.state_dict())
    rep = apply_chat_vector(tm, tvec, 1.0)
    w = "model.embed_tokens.weight"
    assert torch.equal(tm.model.embed_tokens.weight, e0 + (ti.state_dict()[w] - tb.state_dict()[w]))
    assert tm.lm_head.weight is tm.model.embed_tokens.weight
    # in place (on a tied pair too) gives the same vector
    inplace = chat_vector(tb.state_dict(), {k: v.clone() for k, v in ti.state_dict().items()}, inplace=True)
    assert all(torch.equal(inplace[k], tvec[k]) for k in tvec)
    with pytest.raises(ValueError, match="not a base model"):
        chat_vector({"x": torch.zeros(3, 4)}, {"x": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="changed nothing"):
        apply_chat_vector(tiny_llama(40, 4), {"other.weight": torch.zeros(2)}, 1.0)


# ----------------------------------------------------------------------------- generation and exact match

def test_batched_generation_equals_one_prompt_at_a_time(tiny_assets):
    """Left padding with an attention mask must not change greedy answers."""
    from lib.modeling.model import load_model
    model, tok = load_model(str(tiny_assets["model"]), "cpu")
    template = ins.Template("Q: {instruction} A:", "Q: {instruction} A:", "")
    reqs = [{"instruction": EN_LINES[i][: 8 + 7 * i], "input": ""} for i in range(5)]
    reqs.append({"instruction": KO_LINES[3], "input": EN_LINES[2]})
    lengths = {len(tok(template.generation_prompt(r["instruction"], r["input"]))["input_ids"]) for r in reqs}
    assert len(lengths) >= 4                       # the batch really is padded
    batched = sft.generate(model, tok, template, reqs, max_new_tokens=8, batch_size=16)
    single = sft.generate(model, tok, template, reqs, max_new_tokens=8, batch_size=1)
    assert batched == single and any(batched)


def test_exact_match_scores_by_language(monkeypatch):
    records = [{"lang": "ko", "output": "축구"}, {"lang": "ko", "output": "배구"},
               {"lang": "en", "output": "a  hamster"}, {"lang": "en", "output": "pink"}]
    monkeypatch.setattr(sft, "generate", lambda *a, **k: ["축구", "축구 ", "a hamster", "red"])
    em = sft.exact_match(None, None, None, records, 4)
    assert em == {"all": 0.5, "n": 4, "en": 0.5, "ko": 0.5}


# ----------------------------------------------------------------------------- chat template

def test_chat_template_gives_the_trained_ids(tiny_assets):
    from lib.data.chattemplate import jinja_template, messages_of, template_check
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    t = ins.Template()
    tok.chat_template = jinja_template(t, tok)
    recs = [{"instruction": "The cat sees", "input": "the river", "output": "near the school.", "lang": "en"},
            {"instruction": "고양이가 본다", "input": "", "output": "학교에서.", "lang": "ko",
             "history": [["Hi", "Hello!"], ["개가?", "강을 찾는다."]]}]
    exs, _ = ins.encode(tok, recs, t, max_len=10**6)
    for rec, ex in zip(recs, exs):
        got = tok.apply_chat_template(messages_of(rec, t.system, t), tokenize=True, return_dict=True)["input_ids"]
        assert list(got) == ex.ids
    # the generation prompt is exactly what 06's generate() feeds the model
    gen = tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=True, return_dict=True,
                                  add_generation_prompt=True)["input_ids"]
    assert list(gen) == [tok.bos_token_id] + tok(t.generation_prompt("Q?"), add_special_tokens=False)["input_ids"]
    assert template_check(tok, recs, t) == {"records": 2, "exact": 2, "share": 1.0}


def test_chat_template_real_llama2_tokenizer(shared_data, tmp_path):
    from transformers import LlamaTokenizerFast

    from lib.data.chattemplate import jinja_template, template_check
    LlamaTokenizerFast.from_pretrained(shared_data / "tokenizers/llama2/tokenizer.model").save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    t = ins.Template()
    tok.chat_template = jinja_template(t, tok)
    recs = ins.read_records(shared_data / "sft/ko_alpaca_sample.json")[:50]
    assert template_check(tok, recs, t)["exact"] == 50
