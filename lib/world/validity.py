"""The validity rules of the toy world (../shared/docs/TOYWORLD.md), checked on the written files.

Each check reads what 00 wrote to disk, not what the generator meant to write, and returns
figures (counts and shares) that go into ``00_toy_world/metrics.json`` under ``validity``:

    report = check_world("outputs/toy/00_toy_world")     # rules 1, 2 and 4
    report["question_leaks"] == 0 and report["knowledge_leaks"] == 0
    report.update(option_match("outputs/toy/00_toy_world", base_sp_model, korean_sp_model))  # rule 3
    assert_valid(report)                                  # raises naming the rule that failed

Rule by rule: 1. no evaluated question (either language) is in any training file; knowledge facts
are stated in several English paraphrases and never in Korean; question answering is trained on
bridge people in both languages and on nobody else. 2. every knowledge and bridge person's
attributes are stated in both languages. 3. an answer option tokenizes as the entity does in the
training text. 4. ghost people have no facts (no line names a ghost with an entity).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import sentencepiece as spm

from lib.core.prompts import QA_STARTS

from .files import (
    FACTS_FILE,
    INSTRUCTION_FILES,
    KOREAN_TEXT_FILES,
    TRAINING_FILES,
    file_lines,
    leaked_facts,
    read_jsonl,
)

ENGLISH_FILES = ("data/en_pretrain.txt", "data/stage3_en.txt", "data/bridge_train.en")
KOREAN_FILES = ("data/ko_mono.txt", "data/stage3_ko.txt", "data/bridge_train.ko")
OBJECT_CATEGORIES = ("city", "job", "food", "animal", "sport", "colour")


def training_texts(root: Path) -> dict[str, list[str]]:
    """Every training file's lines (an instruction record is one line: its fields joined)."""
    out = {}
    for rel in TRAINING_FILES:
        if not (root / rel).exists():
            continue
        if rel in INSTRUCTION_FILES:
            out[rel] = ["\n".join(str(r.get(k, "")) for k in ("instruction", "input", "output"))
                        for r in read_jsonl(root / rel)]
        else:
            out[rel] = file_lines(root / rel)
    return out


def _word(form: str):
    """A matcher for ``form`` as a word: Latin with word boundaries, Hangul as a substring (no Hangul
    name or entity contains another, see lexicon, so a particle glued to it does not hide it)."""
    if form.isascii():
        return re.compile(rf"(?<![A-Za-z]){re.escape(form)}(?![A-Za-z])")
    return re.compile(re.escape(form))


def question_leaks(texts: dict[str, list[str]], facts: list[dict]) -> list[dict]:
    """Evaluated questions found verbatim in a training file: ``{id, lang, file}`` rows."""
    joined = {rel: "\n".join(lines) for rel, lines in texts.items()}
    leaks = []
    for f in facts:
        for lang in ("en", "ko"):
            q = f[f"question_{lang}"]
            leaks += [{"id": f["id"], "lang": lang, "file": rel} for rel, text in joined.items() if q in text]
    return leaks


def _lines_naming(lines: list[str], a, b) -> int:
    return len({ln for ln in lines if a.search(ln) and b.search(ln)})


def paraphrase_counts(texts: dict[str, list[str]], facts: list[dict], lang: str, files) -> dict:
    """Distinct lines in ``files`` naming a fact's subject and object: min and mean over facts."""
    lines = [ln for rel in files for ln in texts.get(rel, []) if not ln.startswith(tuple(QA_STARTS.values()))]
    counts = [_lines_naming(lines, _word(f[f"subject_{lang}"]), _word(f[f"object_{lang}"])) for f in facts]
    return {"min": min(counts, default=0), "mean": sum(counts) / max(1, len(counts)), "facts": len(counts)}


def qa_by_role(texts: dict[str, list[str]], entities: list[dict]) -> dict[str, dict[str, int]]:
    """QA items per language and role of the person asked about (knowledge / bridge / ghost)."""
    people = [e for e in entities if e["category"] == "person" and e["role"]]
    out = {lang: Counter() for lang in QA_STARTS}
    for lang, start in QA_STARTS.items():
        matchers = [(_word(p[lang]), p["role"]) for p in people]
        for rel, lines in texts.items():
            for ln in lines:
                for part in ln.split("\n"):
                    if part.startswith(start):
                        for m, role in matchers:
                            if m.search(part):
                                out[lang][role] += 1
    return {lang: {role: c[role] for role in ("knowledge", "bridge", "ghost")} for lang, c in out.items()}


def attribute_balance(texts: dict[str, list[str]], entities: list[dict]) -> dict:
    """Share of knowledge / bridge people whose colour and age are stated, per language."""
    colours = {lang: [_word(e[lang]) for e in entities if e["category"] == "colour"] for lang in ("en", "ko")}
    digits = re.compile(r"\d")
    out: dict[str, dict[str, float]] = {}
    for lang, files in (("en", ENGLISH_FILES), ("ko", KOREAN_FILES)):
        lines = [ln for rel in files for ln in texts.get(rel, [])]
        for role in ("knowledge", "bridge"):
            people = [e for e in entities if e["category"] == "person" and e["role"] == role]
            stated = 0
            for p in people:
                name = _word(p[lang])
                mine = [ln for ln in lines if name.search(ln)]
                has_colour = any(c.search(ln) for ln in mine for c in colours[lang])
                has_age = any(digits.search(ln) for ln in mine)
                stated += has_colour and has_age
            out.setdefault(role, {})[lang] = stated / max(1, len(people))
    return out


def ghost_fact_lines(texts: dict[str, list[str]], entities: list[dict]) -> int:
    """Training lines naming a ghost person together with any entity (a ghost has no facts)."""
    ghosts = [e for e in entities if e["role"] == "ghost"]
    objects = [e for e in entities if e["category"] in OBJECT_CATEGORIES]
    n = 0
    for lang in ("en", "ko"):
        gm = [_word(g[lang]) for g in ghosts]
        om = [_word(o[lang]) for o in objects]
        for lines in texts.values():
            for ln in lines:
                if any(g.search(ln) for g in gm) and any(o.search(ln) for o in om):
                    n += 1
    return n


def check_world(world_dir: str | Path) -> dict:
    """Rules 1, 2 and 4 on the files under ``world_dir``; see the module docstring."""
    root = Path(world_dir)
    texts = training_texts(root)
    facts = read_jsonl(root / FACTS_FILE)
    entities = read_jsonl(root / "data/entities.jsonl")
    knowledge = [f for f in facts if f["cell"] == "knowledge"]
    held = [f for f in facts if f["cell"] == "bridge_heldout"]
    qleaks = question_leaks(texts, facts)
    return {
        "question_leaks": len(qleaks), "question_leak_examples": qleaks[:5],
        "knowledge_leaks": len(leaked_facts(root)),
        "knowledge_paraphrases_en": paraphrase_counts(texts, knowledge, "en", ("data/en_pretrain.txt",)),
        "knowledge_statements_ko": paraphrase_counts(texts, knowledge, "ko", KOREAN_TEXT_FILES)["mean"],
        "bridge_heldout_paraphrases_en": paraphrase_counts(texts, held, "en", ("data/en_pretrain.txt",)),
        "bridge_heldout_paraphrases_ko": paraphrase_counts(texts, held, "ko", KOREAN_FILES),
        "qa_items": qa_by_role(texts, entities),
        "attribute_balance": attribute_balance(texts, entities),
        "ghost_fact_lines": ghost_fact_lines(texts, entities),
        "questions": dict(Counter(f["cell"] for f in facts)),
    }


def option_match(world_dir: str | Path, en_model: str | Path, ko_model: str | Path) -> dict:
    """Rule 3: share of entity mentions in the training text whose tokens contain the answer
    option's tokens (SentencePiece models: the base one for English, the Korean one for Korean).

    The option is scored as a continuation (``Answer: Busan``), i.e. tokenized as ``▁Busan``;
    in ``민수는 부산에 산다.`` the Korean model may write ``▁부산에`` as one piece, which the option's
    ``▁부산`` never matches: that mention counts as a mismatch.
    """
    root = Path(world_dir)
    entities = [e for e in read_jsonl(root / "data/entities.jsonl") if e["category"] in OBJECT_CATEGORIES]
    texts = training_texts(root)
    out = {}
    for lang, model, files in (("en", en_model, ENGLISH_FILES), ("ko", ko_model, KOREAN_FILES)):
        sp = spm.SentencePieceProcessor(model_file=str(model))
        options = {e[lang]: sp.encode(e[lang]) for e in entities}
        matchers = {form: _word(form) for form in options}
        mentions = matched = 0
        for rel in files:
            for ln in texts.get(rel, []):
                found = [form for form, m in matchers.items() if m.search(ln)]
                if not found:
                    continue
                ids = sp.encode(ln)
                joined = "," + ",".join(map(str, ids)) + ","
                for form in found:
                    mentions += 1
                    matched += ("," + ",".join(map(str, options[form])) + ",") in joined
        out[lang] = matched / max(1, mentions)
        out[f"{lang}_mentions"] = mentions
    return {"option_match_rate": out}


def assert_valid(report: dict) -> None:
    """Raise ValueError naming the first broken rule of a :func:`check_world` report."""
    problems = []
    if report["question_leaks"]:
        problems.append(f"rule 1: {report['question_leaks']} evaluated questions are in training files, "
                        f"e.g. {report['question_leak_examples'][:2]}")
    if report["knowledge_leaks"]:
        problems.append(f"rule 1: {report['knowledge_leaks']} Korean lines state a knowledge fact")
    qa = report["qa_items"]
    if any(qa[lang]["knowledge"] or qa[lang]["ghost"] for lang in qa):
        problems.append(f"rule 1: question answering about knowledge or ghost people is trained: {qa}")
    if not all(qa[lang]["bridge"] for lang in qa):
        problems.append(f"rule 1: no QA on bridge people in some language: {qa}")
    bal = report["attribute_balance"]
    if any(v < 1.0 for role in bal.values() for v in role.values()):
        problems.append(f"rule 2: attributes not stated for everyone in both languages: {bal}")
    if report["ghost_fact_lines"]:
        problems.append(f"rule 4: {report['ghost_fact_lines']} lines give a ghost person a fact")
    if problems:
        raise ValueError("toy world breaks its validity rules: " + "; ".join(problems))
