"""The toy world: determinism, exact sizes, paired questions, held-out split, leakage guard."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lib.toyworld import (WorldSpec, build_world, expected_counts, leaked_facts, read_jsonl, read_lines,
                          tokenizer_corpus, write_world)
from lib.toyworld import lexicon as lx
from lib.toyworld.korean import PARTICLES, josa
from lib.toyworld.world import render

TRAINING_FILES = ("data/en_pretrain.txt", "data/bridge_train.en", "data/bridge_train.ko", "data/ko_mono.txt",
                  "data/stage3_ko.txt", "data/stage3_en.txt")


@pytest.fixture(scope="module")
def default_world():
    return build_world(WorldSpec())


@pytest.fixture(scope="module")
def default_dir(default_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_world(default_world, out)
    return out


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    write_world(build_world(WorldSpec.micro()), tmp_path / "a")
    write_world(build_world(WorldSpec.micro()), tmp_path / "b")
    write_world(build_world(WorldSpec.micro(seed=99)), tmp_path / "c")
    a, b, c = (file_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert "eval/arc_en.jsonl" in differing and "data/ko_mono.txt" in differing
    assert not list((tmp_path / "a").rglob("*.tmp"))


@pytest.mark.parametrize("spec", [WorldSpec(), WorldSpec.micro()], ids=["default", "micro"])
def test_sizes_are_exactly_those_the_spec_fixes(spec, tmp_path):
    sizes = write_world(build_world(spec), tmp_path)
    for rel, n in expected_counts(spec).items():
        assert sizes[rel]["lines"] == n, rel
        assert len(read_lines(tmp_path / rel)) == n, rel
    assert sizes["data/ko_mono.txt"]["chars"] == len((tmp_path / "data/ko_mono.txt").read_text("utf-8"))


def test_default_world_has_at_least_200_paired_questions(default_world):
    assert len(default_world.records["eval/arc_en.jsonl"]) == 50 * 5 >= 200


def test_paired_questions_are_aligned(default_dir):
    en = read_jsonl(default_dir / "eval/arc_en.jsonl")
    ko = read_jsonl(default_dir / "eval/arc_ko.jsonl")
    facts = read_jsonl(default_dir / "eval/facts.jsonl")
    ents = {e["key"]: e for e in read_jsonl(default_dir / "data/entities.jsonl")}
    en_to_key = {(e["category"], e["en"]): k for k, e in ents.items()}
    assert len({q["id"] for q in en}) == len(en)
    for qe, qk, f in zip(en, ko, facts):
        assert list(qe) == ["id", "question", "choices", "answerKey"]
        assert qe["id"] == qk["id"] == f["id"]
        assert qe["choices"]["label"] == qk["choices"]["label"] == ["A", "B", "C", "D"]
        assert qe["answerKey"] == qk["answerKey"] == f["answerKey"]
        category = ents[f["object"]]["category"]
        keys = [en_to_key[(category, t)] for t in qe["choices"]["text"]]   # same category for all options
        assert len(set(keys)) == 4
        assert qk["choices"]["text"] == [ents[k]["ko"] for k in keys]      # Korean = same entities, same order
        assert keys["ABCD".index(qe["answerKey"])] == f["object"]
        assert f["subject_en"] in qe["question"] and f["subject_ko"] in qk["question"]


def test_answer_positions_are_balanced(default_world):
    counts = Counter(q["answerKey"] for q in default_world.records["eval/arc_en.jsonl"])
    assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1


def test_knowledge_facts_are_taught_in_english(default_world):
    text = default_world.texts["data/en_pretrain.txt"]
    for q, f in zip(default_world.records["eval/arc_en.jsonl"], default_world.records["eval/facts.jsonl"]):
        i = text.index(f"Question: {q['question']}")
        assert text[i + 1] == f"Answer: {f['object_en']}"


def test_knowledge_names_and_all_entities_appear_in_korean_bridge_pairs(default_world):
    ko = "\n".join(default_world.texts["data/bridge_train.ko"])
    for person in default_world.knowledge_people:
        assert default_world.entities[person].ko in ko
    missing = [e.ko for e in default_world.entities.values()
               if e.category != "person" and e.ko not in ko]
    assert not missing


def test_heldout_pairs_are_in_no_training_file(default_dir):
    held = set(read_lines(default_dir / "data/bridge_heldout.en")) | set(read_lines(default_dir / "data/bridge_heldout.ko"))
    for rel in TRAINING_FILES:
        assert not held & set(read_lines(default_dir / rel)), rel
    for rec in read_jsonl(default_dir / "data/instructions.jsonl"):
        assert rec["input"] not in held and rec["output"] not in held


def test_bridge_pairs_are_line_aligned_and_unique(default_dir):
    en = read_lines(default_dir / "data/bridge_train.en")
    ko = read_lines(default_dir / "data/bridge_train.ko")
    assert len(en) == len(ko) == len(set(zip(en, ko)))
    assert all(re.search("[가-힣]", k) for k in ko) and not any(re.search("[가-힣]", e) for e in en)


def test_instructions_are_bilingual_alpaca_records(default_world):
    recs = default_world.records["data/instructions.jsonl"]
    assert Counter(r["lang"] for r in recs) == {"en": 300, "ko": 300}
    assert all(list(r) == ["instruction", "input", "output", "lang"] for r in recs)


def test_generated_world_has_no_leaks(default_world, default_dir):
    assert leaked_facts(default_world) == []
    assert leaked_facts(default_dir) == []


def planted_leak(world) -> str:
    fact = world.eval_facts[0]
    return render(world, lx.FACT_TEMPLATES[fact.relation][0], fact.subject, fact.object)[1]


def test_guard_catches_a_planted_leak_in_a_file(default_world, default_dir, tmp_path):
    copy = tmp_path / "leaky"
    shutil.copytree(default_dir, copy)
    leak = planted_leak(default_world)
    with open(copy / "data/ko_mono.txt", "a", encoding="utf-8") as f:
        f.write(f"어제 들었는데 {leak}\n")
    with open(copy / "data/instructions.jsonl", "a", encoding="utf-8") as f:
        rec = {"instruction": "질문에 답하세요.", "input": "", "output": leak, "lang": "ko"}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    leaks = leaked_facts(copy)
    assert [(x["file"], x["id"]) for x in leaks] == [
        ("data/ko_mono.txt", default_world.records["eval/facts.jsonl"][0]["id"]),
        ("data/instructions.jsonl", default_world.records["eval/facts.jsonl"][0]["id"])]
    assert leaks[0]["line"] == len(read_lines(copy / "data/ko_mono.txt"))


def test_guard_catches_a_leak_in_memory_and_in_english_forms(default_world):
    world = build_world(WorldSpec.micro())
    fact = world.records["eval/facts.jsonl"][3]
    world.texts["data/stage3_ko.txt"].append(f"{fact['subject_en']}는 {fact['object_en']}에 관심이 있다.")
    assert [x["id"] for x in leaked_facts(world)] == [fact["id"]]


def test_lexicon_forms_cannot_be_confused_by_substring_search():
    forms = [ko for ko_list in ([p[1] for p in lx.PEOPLE], *[[e[1] for e in v] for v in lx.CATEGORIES.values()])
             for ko in ko_list]
    assert len(forms) == len(set(forms))
    for a in forms:
        assert not [b for b in forms if a != b and a in b], a
    templates = [t for pairs in (*lx.FACT_TEMPLATES.values(), *lx.ATTRIBUTE_TEMPLATES.values(),
                                 lx.PAIR_TEMPLATES, *lx.CATEGORY_TEMPLATES.values()) for _, t in pairs]
    templates += [t for _, t in lx.QUESTION_TEMPLATES.values()] + [t for t in lx.INSTRUCTION_TEMPLATES["describe"]]
    fixed = [re.sub(r"\{[^}]*\}", " ", t) for t in templates]
    # a name or entity followed by any particle must not contain another form either
    attached = [josa(a, pair) for a in forms for pair in PARTICLES]
    for a in forms:
        assert not [t for t in fixed if a in t], a
        assert not [x for x in attached if a in x and not x.startswith(a)], a
    english = [p[0] for p in lx.PEOPLE] + [e[0] for v in lx.CATEGORIES.values() for e in v]
    assert len(english) == len({e.lower() for e in english})


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="n_knowledge_people"):
        build_world(WorldSpec(n_knowledge_people=200))
    with pytest.raises(ValueError, match="relations"):
        WorldSpec(relations=("lives_in",)).validate()
    with pytest.raises(KeyError, match="n_peeple"):
        WorldSpec.from_dict({"n_peeple": 3})
    assert WorldSpec.from_dict({"relations": ["lives_in", "plays"]}).relations == ("lives_in", "plays")


def test_tokenizer_corpus_keeps_korean_share_small(default_dir):
    lines = tokenizer_corpus(default_dir, ko_share=0.0006)
    ko_chars = sum(len(x) for x in lines if re.search("[가-힣]", x))
    total = sum(len(x) for x in lines)
    assert 0 < ko_chars <= 0.0006 * total * 1.01
