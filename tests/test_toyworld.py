"""The toy world: determinism, exact sizes, question cells, the clone Korean, the validity rules
checked on disk (and that the checks catch planted violations), held-out split, leakage guard."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lib.world import (
    CELLS,
    WordMap,
    WorldSpec,
    assert_valid,
    build_world,
    check_world,
    expected_counts,
    file_lines,
    leaked_facts,
    read_jsonl,
    tokenizer_corpus,
    write_world,
)
from lib.world import lexicon as lx
from lib.world.clone import verbs_last
from lib.world.files import TRAINING_FILES
from lib.world.korean import PARTICLES, josa
from lib.world.world import render


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
    assert "eval/knowledge_en.jsonl" in differing and "data/ko_mono.txt" in differing
    assert "data/word_map.jsonl" not in differing          # the clone's words do not depend on the seed
    assert not list((tmp_path / "a").rglob("*.tmp"))


@pytest.mark.parametrize("spec", [WorldSpec(), WorldSpec.micro()], ids=["default", "micro"])
def test_sizes_are_exactly_those_the_spec_fixes(spec, tmp_path):
    sizes = write_world(build_world(spec), tmp_path)
    for rel, n in expected_counts(spec).items():
        assert sizes[rel]["lines"] == n, rel
        assert len(file_lines(tmp_path / rel)) == n, rel
    assert sizes["data/ko_mono.txt"]["chars"] == len((tmp_path / "data/ko_mono.txt").read_text("utf-8"))


def test_default_world_has_three_question_cells(default_world):
    n = {cell: len(default_world.records[f"eval/{cell}_en.jsonl"]) for cell in CELLS}
    assert n == {"knowledge": 50 * 5, "bridge_heldout": 50 * 2, "ghost": 20 * 5}
    assert Counter(f["cell"] for f in default_world.records["eval/facts.jsonl"]) == n


@pytest.mark.parametrize("cell", CELLS)
def test_paired_questions_are_aligned(default_dir, cell):
    en = read_jsonl(default_dir / f"eval/{cell}_en.jsonl")
    ko = read_jsonl(default_dir / f"eval/{cell}_ko.jsonl")
    facts = [f for f in read_jsonl(default_dir / "eval/facts.jsonl") if f["cell"] == cell]
    ents = {e["key"]: e for e in read_jsonl(default_dir / "data/entities.jsonl")}
    en_to_key = {(e["category"], e["en"]): k for k, e in ents.items()}
    assert len({q["id"] for q in en}) == len(en) == len(facts)
    for qe, qk, f in zip(en, ko, facts):
        assert list(qe) == ["id", "question", "choices", "answerKey"]
        assert qe["id"] == qk["id"] == f["id"] and qe["id"].startswith(cell)
        assert qe["choices"]["label"] == qk["choices"]["label"] == ["A", "B", "C", "D"]
        assert qe["answerKey"] == qk["answerKey"] == f["answerKey"]
        category = ents[f["object"]]["category"]
        keys = [en_to_key[(category, t)] for t in qe["choices"]["text"]]   # same category for all options
        assert len(set(keys)) == 4
        assert qk["choices"]["text"] == [ents[k]["ko"] for k in keys]      # Korean = same entities, same order
        assert keys["ABCD".index(qe["answerKey"])] == f["object"]
        assert f["subject_en"] in qe["question"] and f["subject_ko"] in qk["question"]
        assert (qe["question"], qk["question"]) == (f["question_en"], f["question_ko"])


@pytest.mark.parametrize("cell", CELLS)
def test_answer_positions_are_balanced(default_world, cell):
    counts = Counter(q["answerKey"] for q in default_world.records[f"eval/{cell}_en.jsonl"])
    assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1


def test_roles_are_disjoint_and_ghosts_have_no_facts(default_world):
    k, b, g = (set(x) for x in (default_world.knowledge_people, default_world.bridge_people,
                                default_world.ghost_people))
    assert (len(k), len(b), len(g)) == (50, 50, 20) and not (k & b or k & g or b & g)
    stated = {f.subject for f in default_world.eval_facts + default_world.bridge_facts
              + default_world.heldout_facts + default_world.attributes}
    assert not stated & g
    held = {(f.subject, f.relation) for f in default_world.heldout_facts}
    assert not held & {(f.subject, f.relation) for f in default_world.bridge_facts}
    assert Counter(f.subject for f in default_world.heldout_facts) == {p: 2 for p in b}


@pytest.mark.parametrize("style", ["clone", "clone_sov", "toy"])
def test_files_obey_the_validity_rules(style, tmp_path):
    """Each rule of TOYWORLD.md, measured on the written files (not on the generator's intent)."""
    write_world(build_world(WorldSpec(korean_style=style)), tmp_path)
    r = check_world(tmp_path)
    assert r["question_leaks"] == 0 and r["knowledge_leaks"] == 0                 # rule 1
    assert r["knowledge_paraphrases_en"]["min"] == 5                             # five paraphrases each
    assert r["knowledge_statements_ko"] == 0                                     # never in Korean
    assert r["bridge_heldout_paraphrases_ko"]["min"] >= 3                        # stated in Korean too
    qa = r["qa_items"]
    assert qa["en"]["bridge"] > 0 and qa["ko"]["bridge"] > 0                     # QA learned on bridge people
    assert qa["en"]["knowledge"] == qa["ko"]["knowledge"] == qa["en"]["ghost"] == qa["ko"]["ghost"] == 0
    assert r["attribute_balance"] == {"knowledge": {"en": 1.0, "ko": 1.0}, "bridge": {"en": 1.0, "ko": 1.0}}
    assert r["ghost_fact_lines"] == 0                                            # rule 4
    assert r["questions"] == {"knowledge": 250, "bridge_heldout": 100, "ghost": 100}
    assert_valid(r)


def test_validity_checks_catch_planted_violations(default_world, default_dir, tmp_path):
    copy = tmp_path / "bad"
    shutil.copytree(default_dir, copy)
    fact = default_world.records["eval/facts.jsonl"][0]                        # a knowledge question
    ghost = default_world.entities[default_world.ghost_people[0]]
    with open(copy / "data/ko_mono.txt", "a", encoding="utf-8") as f:
        f.write(f"질문: {fact['question_ko']}\n정답: {fact['object_ko']}\n")
        f.write(f"{ghost.ko} 부산\n")
    r = check_world(copy)
    assert r["question_leaks"] == 1 and r["question_leak_examples"][0]["file"] == "data/ko_mono.txt"
    assert r["qa_items"]["ko"]["knowledge"] == 1 and r["ghost_fact_lines"] == 1
    with pytest.raises(ValueError, match="rule 1: 1 evaluated questions.*rule 4: 1 lines give a ghost"):
        assert_valid(r)
    # rule 2: drop one knowledge person's age from the Korean text
    person = default_world.entities[default_world.knowledge_people[0]].ko
    for rel in ("data/ko_mono.txt", "data/stage3_ko.txt", "data/bridge_train.ko"):
        lines = file_lines(copy / rel)
        (copy / rel).write_text("".join(ln + "\n" for ln in lines if not (person in ln and re.search(r"\d", ln))),
                                encoding="utf-8")
    assert check_world(copy)["attribute_balance"]["knowledge"]["ko"] == 49 / 50


def test_clone_korean_is_the_word_for_word_image_of_english(default_world, default_dir):
    wm = default_world.wordmap
    assert len(set(wm.en_to_ko.values())) == len(wm.en_to_ko)                   # one-to-one
    assert (wm.word("Question"), wm.word("Answer"), wm.word("Busan")) == ("질문", "정답", "부산")
    en, ko = file_lines(default_dir / "data/bridge_train.en"), file_lines(default_dir / "data/bridge_train.ko")
    assert all(wm.translate(e) == k for e, k in zip(en, ko))
    rows = read_jsonl(default_dir / "data/word_map.jsonl")
    assert [(r["en"], r["ko"]) for r in rows] == wm.pairs()
    for rel in ("data/ko_mono.txt", "data/stage3_ko.txt"):                      # no Latin letters in Korean text
        assert not any(re.search("[A-Za-z]", ln) for ln in file_lines(default_dir / rel)), rel
    with pytest.raises(KeyError, match="Zebra"):
        wm.translate("Zebra lives in Busan.")


def test_clone_sov_puts_verbs_last_and_toy_has_no_word_map(tmp_path):
    assert verbs_last("Minsu lives in Busan.") == "Minsu in Busan lives."
    assert verbs_last("Where does Minsu live?") == "Where Minsu does live?"
    assert verbs_last("Minsu and Jiho.") == "Minsu and Jiho."
    sov = build_world(WorldSpec.micro(korean_style="clone_sov"))
    clone = build_world(WorldSpec.micro(korean_style="clone"))
    q_sov, q_clone = (w.records["eval/knowledge_ko.jsonl"][0]["question"] for w in (sov, clone))
    assert sorted(q_sov.rstrip("?").split()) == sorted(q_clone.rstrip("?").split()) and q_sov != q_clone
    write_world(build_world(WorldSpec.micro(korean_style="toy")), tmp_path)
    assert not (tmp_path / "data/word_map.jsonl").exists()
    assert "민수는" in (tmp_path / "data/bridge_train.ko").read_text("utf-8") \
        or re.search("[가-힣](은|는|이|가) ", (tmp_path / "data/bridge_train.ko").read_text("utf-8"))
    with pytest.raises(ValueError, match="korean_style"):
        WorldSpec(korean_style="klingon").validate()


def test_knowledge_names_and_all_entities_appear_in_korean_bridge_pairs(default_world):
    ko = "\n".join(default_world.texts["data/bridge_train.ko"])
    for person in default_world.knowledge_people:
        assert default_world.entities[person].ko in ko
    missing = [e.ko for e in default_world.entities.values()
               if e.category != "person" and e.ko not in ko]
    assert not missing


def test_heldout_pairs_are_in_no_training_file(default_dir):
    held = set(file_lines(default_dir / "data/heldout_pairs.en")) | set(file_lines(default_dir / "data/heldout_pairs.ko"))
    for rel in TRAINING_FILES:
        if rel.endswith(".jsonl"):
            continue
        assert not held & set(file_lines(default_dir / rel)), rel
    for rec in read_jsonl(default_dir / "data/instructions.jsonl"):
        assert rec["input"] not in held and rec["output"] not in held


def test_bridge_pairs_are_line_aligned_and_unique(default_dir):
    en = file_lines(default_dir / "data/bridge_train.en")
    ko = file_lines(default_dir / "data/bridge_train.ko")
    assert len(en) == len(ko) == len(set(zip(en, ko)))
    assert all(re.search("[가-힣]", k) for k in ko) and not any(re.search("[가-힣]", e) for e in en)


def test_instructions_are_bilingual_alpaca_records(default_world):
    recs = default_world.records["data/instructions.jsonl"]
    assert Counter(r["lang"] for r in recs) == {"en": 300, "ko": 300}
    assert all(list(r) == ["instruction", "input", "output", "lang"] for r in recs)
    asked = {f[f"question_{lang}"] for f in default_world.records["eval/facts.jsonl"] for lang in ("en", "ko")}
    assert not [r for r in recs if r["instruction"] in asked]                   # no evaluated question


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
    first = default_world.records["eval/facts.jsonl"][0]["id"]
    assert [(x["file"], x["id"]) for x in leaks] == [("data/ko_mono.txt", first), ("data/instructions.jsonl", first)]
    assert leaks[0]["line"] == len(file_lines(copy / "data/ko_mono.txt"))


def test_guard_catches_a_leak_in_memory_and_in_english_forms(default_world):
    world = build_world(WorldSpec.micro())
    fact = [f for f in world.records["eval/facts.jsonl"] if f["cell"] == "knowledge"][3]
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
    # the clone's pseudo-words neither contain nor sit inside a name or entity
    pseudo = [ko for _, ko in WordMap.build().pairs() if ko not in forms]
    assert len(pseudo) > 100
    for w in pseudo:
        assert not [f for f in forms if f in w or w in f], w


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="n_knowledge_people"):
        build_world(WorldSpec(n_knowledge_people=200))
    with pytest.raises(ValueError, match="heldout_relations"):
        WorldSpec(heldout_relations=5).validate()
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
    assert not any("\n" in x for x in lines)             # QA pairs joined without their newline
    assert any(x.startswith("Question: ") and "?Answer: " in x for x in lines)
