"""Generate the text splits and the paired MC questions of a toy world (called by build_world).

Split file names (relative to the 00_toy_world folder) and what may be in them:

| file | language | content |
|---|---|---|
| data/en_pretrain.txt | en | knowledge + bridge facts (paraphrases), Question/Answer items, mentions |
| data/bridge_train.{en,ko} | pair | bridge facts + mentions of anybody (stage 1) |
| data/bridge_heldout.{en,ko} | pair | held-out bridge facts + unseen event pairs, in no other file |
| data/ko_mono.txt | ko | bridge facts, mentions, category sentences (stage 2) |
| data/stage3_ko.txt, stage3_en.txt | ko / en | stage 3 sides; English side also states the knowledge facts |
| data/instructions.jsonl | both | alpaca records about bridge people (QA, translation, description) |
| data/sample.{en,ko} | pair | parallel lines for tokenizer statistics |
| eval/arc_{en,ko}.jsonl, eval/facts.jsonl | both | paired questions about the knowledge facts |

A Korean line never holds the subject and the object of an evaluated fact together; the guard in
:func:`lib.toyworld.files.leaked_facts` checks it.
"""
from __future__ import annotations

import random

from . import lexicon as lx
from .world import (LABELS, N_CHOICES, Fact, World, all_category_pairs, fact_pairs, mention_pair,
                    event_pair, qa_lines, question_text, unique_pairs)


def fill_splits(world: World) -> None:
    """Fill ``world.texts`` and ``world.records`` in place."""
    spec = world.spec

    def rng(name: str) -> random.Random:
        return random.Random(f"{spec.seed}:{name}")

    # Held-out pairs first, so that no later split can contain one of their sentences.
    held_sentences: set[str] = set()
    r = rng("bridge_heldout")
    held = [pair for fact in world.heldout_facts for pair in fact_pairs(world, fact, spec.bridge_paraphrases, r)]
    held = held[:spec.n_heldout_pairs]
    held_sentences.update(s for pair in held for s in pair)
    held += unique_pairs(lambda g: event_pair(world, g), spec.n_heldout_pairs - len(held), r, held_sentences, "held-out event pairs")
    r.shuffle(held)

    r = rng("bridge_train")
    taken = set(held_sentences)
    facts = [pair for fact in world.bridge_facts for pair in fact_pairs(world, fact, spec.bridge_paraphrases, r)]
    taken.update(s for pair in facts for s in pair)
    mentions = unique_pairs(lambda g: mention_pair(world, g), spec.n_mention_pairs, r, taken, "mention pairs")
    train = facts + mentions
    r.shuffle(train)

    world.texts.update({
        "data/bridge_train.en": [en for en, _ in train],
        "data/bridge_train.ko": [ko for _, ko in train],
        "data/bridge_heldout.en": [en for en, _ in held],
        "data/bridge_heldout.ko": [ko for _, ko in held],
        "data/en_pretrain.txt": en_pretrain(world, [en for en, _ in mentions], rng("en_pretrain")),
        "data/ko_mono.txt": sampled_lines(world, spec.n_ko_mono, "ko", held_sentences, rng("ko_mono")),
        "data/stage3_ko.txt": sampled_lines(world, spec.n_stage3_ko, "ko", held_sentences, rng("stage3_ko")),
        "data/stage3_en.txt": sampled_lines(world, spec.n_stage3_en, "en", held_sentences, rng("stage3_en")),
    })
    r = rng("sample")
    sample = [sampled_pair(world, "ko", held_sentences, r) for _ in range(spec.n_sample)]
    world.texts["data/sample.en"] = [en for en, _ in sample]
    world.texts["data/sample.ko"] = [ko for _, ko in sample]
    world.records["data/instructions.jsonl"] = instructions(world, train, rng("instructions"))
    en_q, ko_q, facts_rows = questions(world, rng("questions"))
    world.records.update({"eval/arc_en.jsonl": en_q, "eval/arc_ko.jsonl": ko_q, "eval/facts.jsonl": facts_rows})


def en_pretrain(world: World, mention_lines: list[str], rng: random.Random) -> list[str]:
    """English base-pretraining lines; a Question/Answer item stays on two adjacent lines."""
    spec = world.spec
    items: list[list[str]] = []
    for fact in world.eval_facts + world.bridge_facts:
        items += [[en] for en, _ in fact_pairs(world, fact, spec.en_paraphrases, rng)]
        items += [qa_lines(world, fact) for _ in range(spec.qa_repeats)]
    items += [[line] for line in mention_lines]
    items += [[en] for en, _ in all_category_pairs(world)]
    rng.shuffle(items)
    return [line for item in items for line in item]


def sampled_pair(world: World, lang: str, exclude: set[str], rng: random.Random) -> tuple[str, str]:
    """One pair for monolingual text. The English side may state knowledge facts, never Korean.

    Mixture: 45% facts, 45% mentions, 10% category sentences; English draws its facts from
    knowledge and bridge facts alike, Korean only from trained bridge facts.
    """
    while True:
        x = rng.random()
        if x < 0.45:
            pool = world.bridge_facts + (world.eval_facts if lang == "en" else [])
            pair = fact_pairs(world, rng.choice(pool), 1, rng)[0]
        else:
            pair = mention_pair(world, rng)
        if pair[0] not in exclude and pair[1] not in exclude:
            return pair


def sampled_lines(world: World, n: int, lang: str, exclude: set[str], rng: random.Random) -> list[str]:
    side = 0 if lang == "en" else 1
    return [sampled_pair(world, lang, exclude, rng)[side] for _ in range(n)]


def instructions(world: World, train_pairs: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Alpaca records ``{instruction, input, output, lang}`` about bridge people only.

    Per language ``n_instructions`` distinct records: 60% short-answer questions (the answer is the
    bare entity, like the MC options), 25% translations of bridge pairs, 15% descriptions.
    """
    spec = world.spec
    by_person: dict[str, list[Fact]] = {}
    for fact in world.bridge_facts:
        by_person.setdefault(fact.subject, []).append(fact)
    out: list[dict] = []
    for lang in ("en", "ko"):
        seen: set[tuple[str, str]] = set()
        recs: list[dict] = []
        tries = 0
        while len(recs) < spec.n_instructions:
            tries += 1
            if tries > 100 * (spec.n_instructions + 10):
                raise ValueError(f"cannot draw {spec.n_instructions} distinct {lang} instructions; "
                                 "lower n_instructions or raise n_bridge_people")
            x = rng.random()
            if x < 0.6:
                fact = rng.choice(world.bridge_facts)
                rec = {"instruction": question_text(world, fact, lang), "input": "",
                       "output": world.surface(fact.object, lang)}
            elif x < 0.85:
                en, ko = rng.choice(train_pairs)
                rec = {"instruction": lx.INSTRUCTION_TEMPLATES["translate"][0 if lang == "en" else 1],
                       "input": en if lang == "en" else ko, "output": ko if lang == "en" else en}
            else:
                person = rng.choice(world.bridge_people)
                side = 0 if lang == "en" else 1
                template = lx.INSTRUCTION_TEMPLATES["describe"][side]
                name = world.surface(person, lang)
                sentences = [fact_pairs(world, f, 1, rng)[0][side] for f in by_person[person]]
                rec = {"instruction": template.format(s=name), "input": "", "output": " ".join(sentences)}
            if (rec["instruction"], rec["input"]) in seen:
                continue
            seen.add((rec["instruction"], rec["input"]))
            rec["lang"] = lang
            recs.append(rec)
        out += recs
    rng.shuffle(out)
    return out


def questions(world: World, rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """Paired ARC-shaped questions: same id, options and answerKey in English and Korean.

    Distractors come from the answer's category; the answer position cycles A..D over a shuffled
    order, so each label is the answer of n/4 (+-1) questions.
    """
    facts = world.eval_facts
    positions = [i % N_CHOICES for i in range(len(facts))]
    rng.shuffle(positions)
    en_rows, ko_rows, fact_rows = [], [], []
    for fact, pos in zip(facts, positions):
        cat = world.entities[fact.object].category
        others = sorted(k for k, e in world.entities.items() if e.category == cat and k != fact.object)
        options = rng.sample(others, N_CHOICES - 1)
        options.insert(pos, fact.object)
        qid = f"toy_{fact.relation}_{fact.subject}"
        for lang, rows in (("en", en_rows), ("ko", ko_rows)):
            rows.append({"id": qid, "question": question_text(world, fact, lang),
                         "choices": {"text": [world.surface(k, lang) for k in options], "label": list(LABELS)},
                         "answerKey": LABELS[pos]})
        fact_rows.append({"id": qid, "subject": fact.subject, "relation": fact.relation, "object": fact.object,
                          "subject_en": world.surface(fact.subject, "en"),
                          "subject_ko": world.surface(fact.subject, "ko"),
                          "object_en": world.surface(fact.object, "en"),
                          "object_ko": world.surface(fact.object, "ko"),
                          "choices": options, "answerKey": LABELS[pos]})
    return en_rows, ko_rows, fact_rows
