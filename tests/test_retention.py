"""Stage 06's levers against lost transfer (issue 25): freezing, the kept contrastive term,
parallel instructions, interpolation back to the start, consistency preference pairs, and the
validity rules on the new files."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from test_sft import make_cfg
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lib.data.instructions import Template
from lib.data.parallel import items_needed, parallel_records, read_parallel
from lib.eval.contamination import stage_inputs
from lib.train import consistency, sft
from lib.train.retention import freeze, interpolate, retention_problems
from lib.world import build_world, check_world, write_world, WorldSpec

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def write_parallel(path, idx=range(24, 36)):
    """English and Korean 'which sentence is number i' records sharing ``pair`` i."""
    rows = []
    for i in idx:
        rows.append({"instruction": f"Which sentence is number {i}?", "input": "", "output": EN_LINES[i],
                     "lang": "en", "pair": i})
        rows.append({"instruction": f"{i}번 문장은 무엇입니까?", "input": "", "output": KO_LINES[i],
                     "lang": "ko", "pair": i})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=2))


# ----------------------------------------------------------------------------- pieces

def test_parallel_records_share_modes_exclusion_and_seed(tmp_path):
    items = read_parallel(write_parallel(tmp_path / "p.jsonl"))
    assert len(items) == 12 and items[0][0]["lang"] == "en" and items[0][1]["pair"] == 24
    # 0.2 of (40 + 2k) records: k = 0.2 * 40 / 1.6 = 5 items, 10 records
    assert items_needed(0.2, 40) == 5
    recs, rep = parallel_records(items, 0.2, 40, seed=1)
    assert rep["drawn"] == 5 and rep["records"] == 10 and rep["share"] == pytest.approx(10 / 50)
    assert [r["lang"] for r in recs] == ["en", "ko"] * 5 and all(r["history"] == [] for r in recs)
    assert [r["pair"] for r in recs[::2]] == [r["pair"] for r in recs[1::2]]
    assert parallel_records(items, 0.2, 40, seed=1)[0] == recs and parallel_records(items, 0.2, 40, seed=2)[0] != recs
    cross, _ = parallel_records(items, 0.2, 40, seed=1, mode="cross")
    en, ko = cross[0], cross[1]
    assert ko["history"] == [[en["instruction"], en["output"]]] and ko["lang"] == "ko"
    # an excluded question (held out, or evaluated) takes its item out, in both languages
    banned = items[3][1]["instruction"]
    recs, rep = parallel_records(items, 0.9, 400, seed=1, exclude=[banned])
    assert rep["excluded"] == 1 and rep["drawn"] == 11 and banned not in {r["instruction"] for r in recs}


def test_read_parallel_refuses_an_item_without_both_languages(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"instruction": "Q?", "output": "A", "lang": "en", "pair": 3}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"pair 3 must have one 'en' and one 'ko' record, has \{'en': 1\}"):
        read_parallel(p)
    p.write_text(json.dumps({"instruction": "Q?", "output": "A", "lang": "en"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="record 1 has no 'pair'"):
        read_parallel(p)


def test_retention_values_are_checked():
    ok = {"freeze": ["embeddings"], "freeze_layers": 2, "interpolate": 0.5, "parallel_share": 0.3,
          "parallel_mode": "cross"}
    assert retention_problems(ok) == []
    bad = {"freeze": ["embedings"], "freeze_layers": -1, "interpolate": 1.5, "parallel_share": 1.0,
           "parallel_mode": "mixed"}
    assert [k for k, _ in retention_problems(bad)] == ["freeze", "freeze_layers", "interpolate",
                                                       "parallel_share", "parallel_mode"]


def test_freeze_turns_off_exactly_the_named_parts():
    m = tiny(0)
    rep = freeze(m, ["embeddings", "lm_head"], 2)
    off = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert "model.embed_tokens.weight" in off and "lm_head.weight" in off
    assert all(n.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens", "lm_head")) for n in off)
    assert not any(n.startswith("model.layers.2.") for n in off) and "model.norm.weight" not in off
    assert rep["tensors"] == len(off) == 2 + 2 * 9
    with pytest.raises(ValueError, match="freeze_layers = 4, but the model has 3 layers"):
        freeze(tiny(0), [], 4)


def test_interpolate_is_the_weighted_mean_in_fp32(tmp_path, tiny_assets):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    a, b = tiny(0), tiny(1)
    for m, d in ((a, "a"), (b, "b")):
        m.save_pretrained(tmp_path / d)
        tok.save_pretrained(tmp_path / d)
    rep = interpolate(tmp_path / "a", tmp_path / "b", 0.25)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    for k, v in a.state_dict().items():
        want = v + 0.25 * (b.state_dict()[k] - v)
        assert torch.allclose(got[k], want, atol=1e-6, rtol=0), k
    assert rep["kept_norm"] == pytest.approx(0.25 * rep["delta_norm"])
    c = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                     num_attention_heads=2, num_key_value_heads=2))
    c.save_pretrained(tmp_path / "c")
    tok.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="differ in shape"):
        interpolate(tmp_path / "c", tmp_path / "a", 0.5)


def test_consistency_pairs_prefer_the_korean_form_of_the_english_answer(tmp_path, monkeypatch):
    ents = [{"key": "busan", "category": "city", "en": "Busan", "ko": "부산", "role": ""},
            {"key": "daegu", "category": "city", "en": "Daegu", "ko": "대구", "role": ""},
            {"key": "suwon", "category": "city", "en": "Suwon", "ko": "수원", "role": ""}]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in ents), encoding="utf-8")
    rows = []
    for k, (q_en, q_ko) in enumerate([("Where does A live?", "A 어디?"), ("Where does B live?", "B 어디?"),
                                      ("Where does C live?", "C 어디?"), ("Where does D live?", "D 어디?")]):
        rows += [{"instruction": q_en, "output": "x", "lang": "en", "pair": k},
                 {"instruction": q_ko, "output": "x", "lang": "ko", "pair": k}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # the model's answers, English then Korean per item: disagrees, agrees, English not an entity, excluded
    answers = ["Busan", "대구", "Daegu", "대구", "somewhere", "수원", "Suwon", "수원"]
    monkeypatch.setattr(consistency, "greedy", lambda model, tok, prompts, n, bs: answers[:len(prompts)])
    pairs, rep = consistency.consistency_pairs(None, None, Template(), tmp_path / "p.jsonl", tmp_path / "e.jsonl",
                                               None, seed=0, exclude=["D 어디?"])
    assert rep == {"items": 3, "unmatched": 1, "agreed": 1, "disagreed": 1, "pairs": 2, "agreement_before": 0.5}
    assert pairs[0] == {"prompt": "A 어디?", "chosen": "부산", "rejected": "대구", "lang": "ko", "kind": "consistency"}
    assert pairs[1]["chosen"] == "대구" and pairs[1]["rejected"] in ("부산", "수원")


# ----------------------------------------------------------------------------- validity of the new files

def test_the_parallel_file_is_checked_for_leaks_and_scanned(tmp_path):
    root = tmp_path / "world"
    write_world(build_world(WorldSpec.micro()), root)
    assert check_world(root)["question_leaks"] == 0
    facts = [json.loads(x) for x in (root / "eval/facts.jsonl").read_text(encoding="utf-8").splitlines()]
    planted = {"instruction": facts[0]["question_ko"], "input": "", "output": "x", "lang": "ko", "pair": 999}
    with open(root / "data/instructions_parallel.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(planted, ensure_ascii=False) + "\n")
    report = check_world(root)
    assert report["question_leaks"] >= 1
    assert any("instructions_parallel" in str(x) for x in report["question_leak_examples"])
    # the contamination scan reads it when 06 trains on it, and not otherwise
    on = {"06_instruction_tuning": {"data_files": [], "parallel_file": str(root / "data/instructions_parallel.jsonl"),
                                    "parallel_share": 0.3}}
    assert [i.key for i, _ in stage_inputs(on, tmp_path)] == ["parallel_file"]
    on["06_instruction_tuning"]["parallel_share"] = 0.0
    assert stage_inputs(on, tmp_path) == []


# ----------------------------------------------------------------------------- the stage with every lever

@pytest.mark.slow
def test_sft_with_every_lever(tmp_path, tiny_assets):
    par = write_parallel(tmp_path / "par.jsonl")
    (tmp_path / "al.ko").write_text("\n".join(KO_LINES[:24]) + "\n", encoding="utf-8")
    (tmp_path / "al.en").write_text("\n".join(EN_LINES[:24]) + "\n", encoding="utf-8")
    cfg = make_cfg(tmp_path, tiny_assets, freeze=["embeddings"], freeze_layers=1, align_weight=0.5,
                   align_pairs_ko=str(tmp_path / "al.ko"), align_pairs_en=str(tmp_path / "al.en"),
                   align_batch_size=4, parallel_file=str(par), parallel_share=0.2, parallel_mode="cross",
                   interpolate=0.5)
    m = sft.run(cfg)
    r = m["retention"]
    assert r["frozen"]["bottom_layers"] == 1 and r["frozen"]["parts"] == ["embeddings"]
    assert r["parallel"]["drawn"] == items_needed(0.2, 41) == 5 and m["data"]["train_examples"] == 51
    assert r["alignment"]["align_pairs"] > 0 and all(x is not None for x in m["curves"]["info_nce"])
    assert m["loss"]["last"] < m["loss"]["first"]
    start = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "checkpoints/step-000012/model").state_dict()
    final = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model").state_dict()
    for k, v in start.items():
        if k.startswith(("model.embed_tokens.", "model.layers.0.")):
            assert torch.equal(tuned[k], v) and torch.equal(final[k], v), k       # frozen: bit-identical
        assert torch.allclose(final[k], v + 0.5 * (tuned[k] - v), atol=1e-6, rtol=0), k
    assert not torch.equal(tuned["model.layers.1.mlp.up_proj.weight"], start["model.layers.1.mlp.up_proj.weight"])
    assert r["interpolate"]["weight"] == 0.5
