"""DPO after instruction tuning (lib.data.preferences, lib.train.dpo, 06 with dpo: true), on the micro
toy world (built here in < 1 s) and a tiny random Llama."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.core.params import notebook_params
from lib.core.stage import resolve
from lib.data import instructions as ins
from lib.data import preferences as P
from lib.data.instructions import Template, hangul_share
from lib.modeling.model import pad_id_of
from lib.train import dpo, sft
from lib.world import WorldSpec, build_world, write_world

STAGE = "06_instruction_tuning"
SHORT = dict(prompt_template="{system} Q: {instruction} A:", turn_template="Q: {instruction} A:", system_prompt="Answer.")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_world") / "00_toy_world"
    write_world(build_world(WorldSpec.micro()), root)
    return root


def toy_files(root):
    return root / "data/instructions.jsonl", root / "data/entities.jsonl", root / "eval/facts.jsonl"


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- pairs

def test_toy_pairs_mean_what_they_say(micro_world):
    inst, ents, facts = toy_files(micro_world)
    pairs, rep = P.toy_pairs(inst, ents, facts, seed=1)
    entities = rows(ents)
    name_of = {(lang, e[lang]): e for e in entities for lang in ("en", "ko")}
    qa = [r for r in rows(inst) if not r["input"] and (r["lang"], r["output"]) in name_of]
    # one fact pair per short-answer record, one language pair per Korean one; nothing else
    assert rep["qa_records"] == len(qa) == 54 and rep["dropped_evaluated"] == 0
    assert rep["pairs_fact"] == 54 and rep["pairs_language"] == sum(r["lang"] == "ko" for r in qa) == 27
    evaluated = {r[k] for r in rows(facts) for k in ("question_en", "question_ko")}
    assert evaluated and not {p["prompt"] for p in pairs} & evaluated
    for p in pairs:
        right = name_of[(p["lang"], p["chosen"])]
        if p["kind"] == "fact":        # another entity of the same category, same language
            wrong = name_of[(p["lang"], p["rejected"])]
            assert wrong["category"] == right["category"] and wrong["key"] != right["key"]
        else:                          # the same entity, in English, to a Korean question
            assert p["lang"] == "ko" and p["rejected"] == right["en"]
            assert hangul_share(p["prompt"]) > 0.5
            assert hangul_share(p["chosen"]) == 1.0 and p["rejected"].isascii() and p["rejected"].isalpha()
    assert P.toy_pairs(inst, ents, facts, seed=1)[0] == pairs
    assert P.toy_pairs(inst, ents, facts, seed=2)[0] != pairs          # the wrong answers are seeded


def test_toy_pairs_drop_evaluated_and_excluded_questions(micro_world, tmp_path):
    inst, ents, facts = toy_files(micro_world)
    fact = rows(facts)[0]
    recs = rows(inst) + [{"instruction": fact["question_ko"], "input": "", "output": fact["object_ko"], "lang": "ko"}]
    bad = tmp_path / "instructions.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    first = next(r for r in rows(inst) if not r["input"] and r["lang"] == "en" and len(r["output"].split()) == 1)
    pairs, rep = P.toy_pairs(bad, ents, facts, seed=1, exclude=[first["instruction"]])
    assert rep["dropped_evaluated"] == 1 and rep["dropped_excluded"] == 1
    assert fact["question_ko"] not in {p["prompt"] for p in pairs} and first["instruction"] not in {p["prompt"] for p in pairs}


def test_split_holds_out_whole_prompts(micro_world):
    pairs, _ = P.toy_pairs(*toy_files(micro_world), seed=1)
    train, held = P.split_pairs(pairs, 0.25, seed=3)
    prompts = {p["prompt"] for p in pairs}
    assert len(train) + len(held) == len(pairs)
    assert len({p["prompt"] for p in held}) == round(0.25 * len(prompts))
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    assert P.split_pairs(pairs, 0.25, seed=3) == (train, held)
    assert P.split_pairs(pairs, 0.0, seed=3) == (pairs, [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        P.split_pairs(pairs, 1.0, seed=3)


def test_pair_file_errors_name_file_and_line(tmp_path):
    good = {"prompt": "민수는 어디에 살아요?", "chosen": "부산", "rejected": "Busan"}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(good, ensure_ascii=False) + "\n\n" + json.dumps({**good, "lang": "en", "kind": "k"}) + "\n")
    a, b = P.read_pairs(f)
    assert a["lang"] == "ko" and a["kind"] == "file" and b["lang"] == "en" and b["kind"] == "k"
    for line3, msg in (("{not json", r"pairs.jsonl:3: not JSON"),
                       (json.dumps({**good, "rejected": ""}), r"pairs.jsonl:3: 'rejected' must be a non-empty string"),
                       (json.dumps({**good, "rejected": " 부산"}), r"pairs.jsonl:3: 'chosen' and 'rejected' are the same"),
                       (json.dumps([good]), r"pairs.jsonl:3: expected an object"),
                       (json.dumps({**good, "lang": 3}), r"pairs.jsonl:3: 'lang' must be a string")):
        f.write_text(json.dumps(good) + "\n\n" + line3 + "\n")
        with pytest.raises(ValueError, match=msg):
            P.read_pairs(f)
    with pytest.raises(ValueError, match=r"pairs.json: preference pairs are read from JSON Lines"):
        P.read_pairs(tmp_path / "pairs.json")
    with pytest.raises(FileNotFoundError, match="nothere.jsonl: file not found"):
        P.read_pairs(tmp_path / "nothere.jsonl")


def test_pairs_tokenized_as_06_tokenizes_a_record(tiny_assets):
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    t = Template(prompt=SHORT["prompt_template"], turn=SHORT["turn_template"], system=SHORT["system_prompt"])
    pair = {"prompt": "The cat sees", "chosen": "the river", "rejected": "the house", "lang": "en", "kind": "fact"}
    ((c, r),), kept, rep = P.encode_pairs(tok, [pair], t, 512)
    (want,), _ = ins.encode(tok, [{"instruction": "The cat sees", "input": "", "output": "the river", "lang": "en"}], t, 512)
    assert c.ids == want.ids and c.mask == want.mask and kept == [pair] and rep == {"dropped_too_long": 0, "truncated": 0}
    n_prompt = c.mask.index(1)
    assert r.ids[:n_prompt] == c.ids[:n_prompt] and r.ids[n_prompt:] != c.ids[n_prompt:]
    # cut at max_len; a pair whose answer is cut away entirely is dropped
    _, kept, rep = P.encode_pairs(tok, [pair], t, n_prompt)
    assert kept == [] and rep["dropped_too_long"] == 1
    ((c2, _),), _, rep = P.encode_pairs(tok, [pair], t, n_prompt + 1)
    assert len(c2.ids) == n_prompt + 1 and rep["truncated"] == 1


# ----------------------------------------------------------------------------- loss

def test_dpo_loss_numbers():
    # chosen gains 0.5 nats over the reference, rejected loses 0.5: rewards +-0.05 at beta 0.1
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -3.0]), torch.tensor([-1.5, -1.0])
    loss, ch, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(ch, torch.tensor([0.05, 0.0]))
    torch.testing.assert_close(rj, torch.tensor([-0.05, 0.0]))
    # -log sigmoid(0.1) = log(1 + e^-0.1) = 0.644397; -log sigmoid(0) = log 2
    torch.testing.assert_close(loss, torch.tensor((math.log1p(math.exp(-0.1)) + math.log(2)) / 2))


def test_sequence_logps_sum_the_answer_tokens_only(tiny_assets):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).eval()
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    labels = torch.tensor([[-100, -100, 6, 7, 2], [-100, -100, 9, 2, -100]])
    att = torch.tensor([[1] * 5, [1, 1, 1, 1, 0]])
    with torch.no_grad():
        got = dpo.sequence_logps(model, {"input_ids": ids, "attention_mask": att, "labels": labels})
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)
    want = torch.stack([lp[0, 1, 6] + lp[0, 2, 7] + lp[0, 3, 2], lp[1, 1, 9] + lp[1, 2, 2]])
    torch.testing.assert_close(got, want)


def test_pair_stream_is_a_function_of_the_step():
    pairs = [(ins.Example([1, i, 2], [0, 1, 1], "en"), ins.Example([1, i, 3, 2], [0, 1, 1, 1], "en")) for i in range(10)]
    ref = torch.arange(20, dtype=torch.float).view(10, 2)
    s = dpo.PairStream(pairs, ref, batch_size=4, grad_accum=2, seed=5, pad_id=0)
    seen = [i for step in range(5) for m in range(2) for i in s.indices(step, m)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))   # each pass: every pair once
    assert seen[:10] != seen[10:20]
    assert s.indices(3, 1, 0, 2) + s.indices(3, 1, 1, 2) != [] and \
        sorted(s.indices(3, 1, 0, 2) + s.indices(3, 1, 1, 2)) == sorted(s.indices(3, 1))
    b = s.batch(2, 1)
    idx = s.indices(2, 1)
    assert torch.equal(b["ref"], ref[idx]) and b["input_ids"].shape[0] == 8
    assert b["input_ids"][0, 1] == idx[0] and b["input_ids"][4, 1] == idx[0]          # chosen rows, then rejected
    assert s.epochs(5) == 4.0


# ----------------------------------------------------------------------------- training

def dpo_cfg(tmp_path, assets, world, **overrides):
    import shutil
    run = tmp_path / "run"
    if not (run / "00_toy_world").exists():
        shutil.copytree(world, run / "00_toy_world")
    ns = {k: p.default for k, p in notebook_params(STAGE).items()}
    ns.update(run=str(run), init_from=str(assets["model"]), data_files=[str(run / "00_toy_world/data/instructions.jsonl")],
              eval_examples=10, max_len=96, batch_size=8, steps=6, warmup_steps=0, lr=1e-2, eval_every=0,
              save_every=0, report_to="none", max_new_tokens=4, match_examples=8, seed=1,
              dpo=True, dpo_steps=30, dpo_lr=1e-3, dpo_beta=0.5, dpo_batch_size=8, dpo_warmup_steps=0,
              dpo_eval_every=10, dpo_heldout=0.3, **SHORT)
    ns.update(overrides)
    return resolve(STAGE, ns)


@pytest.mark.slow
def test_dpo_full_learns_the_preferences_and_keeps_the_reference(tmp_path, tiny_assets, micro_world):
    cfg = dpo_cfg(tmp_path, tiny_assets, micro_world)
    start = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict().items()}
    out = dpo.train_dpo(cfg, tiny_assets["model"], ins.template_from(cfg))
    m = out["metrics"]
    assert m["loss"]["last"] < 0.5 * m["loss"]["first"] and m["loss"]["first"] == pytest.approx(math.log(2), abs=0.01)
    held = m["heldout"]
    assert held["before"]["reward_accuracy"] == 0.0 and held["before"]["margin"] == 0.0
    # a random model knows no fact: the held-out fact pairs stay near chance (0.5 here), while the
    # language preference (Hangul over Latin answers) carries over to new prompts (0.89, 8 of 9)
    lang = held["after"]["by_kind"]["language"]
    assert lang["reward_accuracy"] >= 0.75 and lang["margin"] > 0.3 and held["after"]["reward_accuracy"] > 0.55
    assert m["train_pairs"]["after"]["reward_accuracy"] >= 0.9          # 0.95 measured
    assert m["pairs"]["heldout"]["pairs"] == held["after"]["n"] > 0 and m["params_trainable"] == m["params_total"]
    assert m["curves"]["eval_step"] == [0, 10, 20, 30]
    # every parameter trained; the start folder (the reference) is untouched
    after = out["model"].state_dict()
    assert all(not torch.equal(start[k], after[k]) for k in start if "rotary" not in k)
    for k, v in AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict().items():
        assert torch.equal(v, start[k]), k


@pytest.mark.slow
def test_dpo_lora_trains_adapters_only_and_its_reference_is_the_disabled_adapter(tmp_path, tiny_assets, micro_world):
    cfg = dpo_cfg(tmp_path, tiny_assets, micro_world, dpo_method="lora", lora_r=4, lora_alpha=8, dpo_steps=12,
                  dpo_lr=1e-2, dpo_eval_every=0)
    out = dpo.train_dpo(cfg, tiny_assets["model"], ins.template_from(cfg))
    model, m = out["model"], out["metrics"]
    assert 0 < m["params_trainable"] < 0.5 * m["params_total"]
    assert m["heldout"]["after"]["reward_accuracy"] > 0.5 and m["loss"]["last"] < m["loss"]["first"]
    base = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).eval()
    # the base weights under the adapters are bit-identical to the start ...
    inner = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in base.state_dict().items():
        assert torch.equal(inner[k], v), k
    # ... so the reference (adapters disabled) scores the pairs exactly as the starting model
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    pairs, _ = P.toy_pairs(*toy_files(micro_world), seed=1)
    enc, _, _ = P.encode_pairs(tok, pairs[:12], ins.template_from(cfg), cfg.max_len)
    pad = pad_id_of(tok)
    ref = dpo.pair_logps(model, enc, pad, reference=True)
    torch.testing.assert_close(ref, dpo.pair_logps(base, enc, pad), rtol=0, atol=1e-5)
    assert not torch.allclose(dpo.pair_logps(model, enc, pad), ref, atol=1e-3)      # the policy moved
    # the saved model is merged: LoRA targets changed, embeddings, head and norms did not
    last = AutoModelForCausalLM.from_pretrained(m["checkpoints"][-1] + "/model").state_dict()
    for k, v in base.state_dict().items():
        if "q_proj" in k or "down_proj" in k:
            assert not torch.equal(v, last[k]), k
        elif "embed" in k or "lm_head" in k or "norm" in k:
            assert torch.equal(v, last[k]), k


@pytest.mark.slow
def test_06_with_dpo_keeps_the_sft_model_and_saves_the_dpo_model(tmp_path, tiny_assets, micro_world):
    cfg = dpo_cfg(tmp_path, tiny_assets, micro_world, dpo_steps=10, dpo_eval_every=0)
    m = sft.run(cfg)
    d = m["dpo"]
    sd = cfg.stage_dir
    assert d["rows_07"] == {"without_dpo": f"{STAGE}-sft", "with_dpo": STAGE}
    # 07's row without DPO is sft_model/, the same weights as the last SFT checkpoint
    ckpt = AutoModelForCausalLM.from_pretrained(sd / "checkpoints/step-000006/model").state_dict()
    kept = AutoModelForCausalLM.from_pretrained(sd / "sft_model").state_dict()
    final = AutoModelForCausalLM.from_pretrained(sd / "model").state_dict()
    assert all(torch.equal(ckpt[k], kept[k]) for k in ckpt)
    assert any(not torch.equal(ckpt[k], final[k]) for k in ckpt)
    assert (sd / "model/tokenizer.model").exists() and AutoTokenizer.from_pretrained(sd / "model").chat_template
    assert [c.split("/")[-1] for c in d["checkpoints"]] == ["step-000010"] and "/dpo/checkpoints/" in d["checkpoints"][0]
    # SFT's held-out records are never DPO pairs
    entities = rows(micro_world / "data/entities.jsonl")
    names = {(lang, e[lang]) for e in entities for lang in ("en", "ko")}
    held = ins.split_heldout(ins.read_records(cfg.data_files[0]), 10, cfg.seed)[1]
    held_qa = [r for r in held if not r["input"] and (r["lang"], r["output"]) in names]
    assert d["pairs"]["dropped_excluded"] == len(held_qa) > 0
    assert set(m["exact_match"]["heldout"]) == {"before", "after", "dpo"} and "dpo" in m["generations"][0]
    assert d["heldout_loss"]["loss"] > 0 and d["heldout"]["after"]["n"] > 0
    table = dpo.pairs_table(d)
    assert list(table["kind"][:3]) == ["all", "fact", "language"] and set(table["split"]) == {"heldout", "train"}


def test_check_names_a_bad_pairs_file_and_toy_pairs_without_a_toy_world(tmp_path, tiny_assets):
    from lib.core.params import load_profile
    from lib.run.check import check_profile
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    inst = tmp_path / "inst.jsonl"
    inst.write_text('{"instruction": "a", "output": "b"}\n')
    f = tmp_path / "p.yaml"
    body = (f"common:\n  base_model: {tiny_assets['model']}\n06_instruction_tuning:\n  data_files: [{inst}]\n"
            f"  eval_examples: 0\n  dpo: true\n  dpo_pairs: {bad}\n  dpo_method: ppo\n  dpo_beta: 0\n")
    f.write_text(body)
    problems = check_profile(load_profile(f), ["06_instruction_tuning"])
    assert any(p.startswith(f"{f}:7: 06_instruction_tuning.dpo_pairs: {bad}:2: 'rejected' must be a non-empty string")
               for p in problems), problems
    assert any(p.startswith(f"{f}:8: 06_instruction_tuning.dpo_method: must be one of full, lora") for p in problems)
    assert any(p.startswith(f"{f}:9: 06_instruction_tuning.dpo_beta: must be > 0") for p in problems), problems
    f.write_text(body.replace(str(bad), "toy").replace("  dpo_method: ppo\n  dpo_beta: 0\n", ""))
    (problem,) = check_profile(load_profile(f), ["06_instruction_tuning"])
    assert problem.startswith(f"{f}:7: 06_instruction_tuning.dpo_pairs: 'toy' builds pairs from the toy world")
    f.write_text(body.replace(str(bad), str(tmp_path / "none.jsonl")).replace("  dpo_method: ppo\n  dpo_beta: 0\n", ""))
    (problem,) = check_profile(load_profile(f), ["06_instruction_tuning"])
    assert "file not found" in problem and "none.jsonl" in problem
