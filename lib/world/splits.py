"""Generate the text splits and the paired MC questions of a toy world (called by build_world).

Split file names (relative to the 00_toy_world folder) and what may be in them:

| file | language | content |
|---|---|---|
| data/en_pretrain.txt | en | every knowledge and bridge fact (paraphrases), QA on bridge people, attributes, events, categories |
| data/bridge_train.{en,ko} | pair | bridge facts + attributes, events, categories (stage 1) |
| data/heldout_pairs.{en,ko} | pair | unseen event pairs for measuring alignment, in no other file |
| data/ko_mono.txt, stage3_ko.txt | ko | bridge facts (paraphrases), QA on bridge people, attributes, events, categories |
| data/stage3_en.txt | en | the English counterpart (knowledge facts included) |
| data/instructions.jsonl | both | alpaca records about bridge people (QA, translation, description) |
| data/sample.{en,ko} | pair | parallel lines for tokenizer statistics |
| eval/{cell}_{en,ko}.jsonl, eval/facts.jsonl | both | the paired questions of each cell (knowledge, bridge_heldout, ghost) |

A Question/Answer item is two adjacent lines (``Question: ...`` / ``Answer: ...``, or
``질문: ...`` / ``정답: ...``); :func:`lib.data.packing.qa_documents` reads them back as one document.
No evaluated question is ever in a training file; :mod:`lib.world.validity` checks it on disk.
"""
from __future__ import annotations

import random
from collections import Counter

from . import lexicon as lx
from .world import (
    CELLS,
    LABELS,
    N_CHOICES,
    Fact,
    World,
    all_category_pairs,
    event_pair,
    fact_pairs,
    mention_pair,
    qa_text,
    question_text,
    unique_pairs,
)


def fill_splits(world: World) -> None:
    """Fill ``world.texts`` and ``world.records`` in place."""
    spec = world.spec

    def rng(name: str) -> random.Random:
        return random.Random(f"{spec.seed}:{name}")

    # Held-out pairs first, so that no later split can contain one of their sentences.
    held_sentences: set[str] = set()
    held = unique_pairs(lambda g: event_pair(world, g), spec.n_heldout_pairs, rng("heldout_pairs"),
                        held_sentences, "held-out event pairs")

    r = rng("bridge_train")
    taken = set(held_sentences)
    stated = world.bridge_facts + world.heldout_facts
    facts = [pair for fact in stated for pair in fact_pairs(world, fact, spec.bridge_paraphrases, r)]
    taken.update(s for pair in facts for s in pair)
    mentions = unique_pairs(lambda g: mention_pair(world, g), spec.n_mention_pairs, r, taken, "mention pairs")
    train = facts + mentions
    r.shuffle(train)
    events = unique_pairs(lambda g: event_pair(world, g), max(50, spec.n_mention_pairs // 2), rng("events"),
                          set(taken), "event pairs")

    en_core = english_core(world, events)
    ko_core = korean_core(world, events)
    world.texts.update({
        "data/bridge_train.en": [en for en, _ in train],
        "data/bridge_train.ko": [ko for _, ko in train],
        "data/heldout_pairs.en": [en for en, _ in held],
        "data/heldout_pairs.ko": [ko for _, ko in held],
        "data/en_pretrain.txt": en_pretrain(world, [en for en, _ in mentions], en_core, rng("en_pretrain")),
        "data/ko_mono.txt": cycled_lines(ko_core, spec.n_ko_mono, rng("ko_mono")),
        "data/stage3_ko.txt": cycled_lines(ko_core, spec.n_stage3_ko, rng("stage3_ko")),
        "data/stage3_en.txt": cycled_lines(en_core, spec.n_stage3_en, rng("stage3_en")),
    })
    r = rng("sample")
    sample = [train[i] for i in sorted(r.sample(range(len(train)), min(spec.n_sample, len(train))))]
    world.texts["data/sample.en"] = [en for en, _ in sample]
    world.texts["data/sample.ko"] = [ko for _, ko in sample]
    world.records["data/instructions.jsonl"] = instructions(world, train, rng("instructions"))
    world.records["data/instructions_parallel.jsonl"] = parallel_instructions(world)
    rows = questions(world, rng("questions"))
    world.records.update(rows)


def statements(world: World, facts: list[Fact], k: int, rng: random.Random, side: int) -> list[list[str]]:
    """``k`` paraphrases of each fact, one item (a one-line list) each, on one side (0 en, 1 ko)."""
    return [[pair[side]] for fact in facts for pair in fact_pairs(world, fact, k, rng)]


def attribute_items(world: World, side: int) -> list[list[str]]:
    """Every attribute of every knowledge and bridge person, in every template of its kind."""
    out = []
    for fact in world.attributes:
        out += [[pair[side]] for pair in fact_pairs(world, fact, len(lx.ATTRIBUTE_TEMPLATES[fact.relation]),
                                                    random.Random(0))]
    return out


def qa_items(world: World, facts: list[Fact], lang: str, repeats: int) -> list[list[str]]:
    """Question/Answer items (two lines each) in the evaluation's prompt format."""
    return [qa_text(world, f, lang).split("\n") for f in facts for _ in range(repeats)]


def english_core(world: World, events: list[tuple[str, str]]) -> list[list[str]]:
    """English items of continued pretraining (stage 3): all facts, bridge QA, attributes, events."""
    r = random.Random(f"{world.spec.seed}:en_core")
    spec = world.spec
    return (statements(world, world.eval_facts + world.bridge_facts + world.heldout_facts, spec.en_paraphrases, r, 0)
            + qa_items(world, world.bridge_facts, "en", spec.qa_repeats) + attribute_items(world, 0)
            + [[en] for en, _ in all_category_pairs(world)] + [[en] for en, _ in events])


def korean_core(world: World, events: list[tuple[str, str]]) -> list[list[str]]:
    """Korean items: bridge facts only (never a knowledge fact), bridge QA, attributes, events."""
    r = random.Random(f"{world.spec.seed}:ko_core")
    spec = world.spec
    return (statements(world, world.bridge_facts + world.heldout_facts, spec.ko_paraphrases, r, 1)
            + qa_items(world, world.bridge_facts, "ko", spec.qa_repeats) + attribute_items(world, 1)
            + [[ko] for _, ko in all_category_pairs(world)] + [[ko] for _, ko in events])


def cycled_lines(core: list[list[str]], n: int, rng: random.Random) -> list[str]:
    """Exactly ``n`` lines: the core items in shuffled passes (every item once per pass); a
    two-line item that would not fit at the end is replaced by one-line items."""
    one_line = [item for item in core if len(item) == 1]
    out: list[str] = []
    while len(out) < n:
        order = list(core)
        rng.shuffle(order)
        for item in order:
            if len(out) + len(item) > n:
                item = rng.choice(one_line)
            out += item
            if len(out) >= n:
                break
    return out[:n]


def en_pretrain(world: World, mention_lines: list[str], core: list[list[str]], rng: random.Random) -> list[str]:
    """English base-pretraining lines: the English core plus the English sides of the mention
    pairs, shuffled; a Question/Answer item stays on two adjacent lines."""
    items = list(core) + [[line] for line in mention_lines]
    rng.shuffle(items)
    return [line for item in items for line in item]


def instructions(world: World, train_pairs: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Alpaca records ``{instruction, input, output, lang}`` about bridge people only.

    Per language ``n_instructions`` distinct records: 60% short-answer questions about QA-trained
    bridge facts (the answer is the bare entity, like the MC options), 25% translations of bridge
    pairs, 15% descriptions.
    """
    spec = world.spec
    by_person: dict[str, list[Fact]] = {}
    for fact in world.bridge_facts + world.heldout_facts:
        by_person.setdefault(fact.subject, []).append(fact)
    translate = {"en": lx.INSTRUCTION_TEMPLATES["translate"][0],
                 "ko": world.korean(lx.INSTRUCTION_TEMPLATES["translate_en"], lx.INSTRUCTION_TEMPLATES["translate"][1])}
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
                rec = {"instruction": translate[lang], "input": en if lang == "en" else ko,
                       "output": ko if lang == "en" else en}
            else:
                person = rng.choice(world.bridge_people)
                side = 0 if lang == "en" else 1
                en_t, ko_t = lx.INSTRUCTION_TEMPLATES["describe"]
                name_en = world.surface(person, "en")
                instruction = (en_t.format(s=name_en) if lang == "en"
                               else world.korean(en_t.format(s=name_en), ko_t.format(s=world.surface(person, "ko"))))
                sentences = [fact_pairs(world, f, 1, rng)[0][side] for f in by_person[person]]
                rec = {"instruction": instruction, "input": "", "output": " ".join(sentences)}
            if (rec["instruction"], rec["input"]) in seen:
                continue
            seen.add((rec["instruction"], rec["input"]))
            rec["lang"] = lang
            recs.append(rec)
        out += recs
    rng.shuffle(out)
    return out


def parallel_instructions(world: World) -> list[dict]:
    """Every QA-trained bridge fact as a question in both languages: two records (English, then
    Korean) that share ``pair``, the answer the bare entity. Stage 06 draws from them when asked to
    give a share of its instructions in both languages (``parallel_share``) and builds consistency
    preference pairs from them; they name bridge people only (QA is trained on nobody else), so no
    evaluated question is among them (validity rule 1 checks the file as it checks the others).
    Deterministic: no draw, so adding the file moved no other split."""
    out = []
    for k, fact in enumerate(world.bridge_facts):
        for lang in ("en", "ko"):
            out.append({"instruction": question_text(world, fact, lang), "input": "",
                        "output": world.surface(fact.object, lang), "lang": lang, "pair": k})
    return out


def questions(world: World, rng: random.Random) -> dict[str, list[dict]]:
    """Paired ARC-shaped questions per cell: same id, options and answerKey in English and Korean,
    plus ``eval/facts.jsonl`` (one row per question, with its cell).

    Distractors come from the answer's category, and are the objects whose count as a trained QA
    answer is closest to the answer's own (ties broken at random): a model that only learned which
    answers QA tends to give cannot beat chance, and the held-out facts' objects, which are QA
    answers a little less often, are not pushed below it. Within a cell the answer position cycles
    A..D over a shuffled order, so each label is the answer of n/4 (+-1) questions.
    """
    qa_count = Counter(f.object for f in world.bridge_facts)
    out: dict[str, list[dict]] = {"eval/facts.jsonl": []}
    for cell in CELLS:
        facts = world.cell_facts(cell)
        positions = [i % N_CHOICES for i in range(len(facts))]
        rng.shuffle(positions)
        en_rows, ko_rows = [], []
        for fact, pos in zip(facts, positions):
            cat = world.entities[fact.object].category
            others = sorted(k for k, e in world.entities.items() if e.category == cat and k != fact.object)
            rng.shuffle(others)
            others.sort(key=lambda k: abs(qa_count[k] - qa_count[fact.object]))   # stable: ties stay shuffled
            options = others[:N_CHOICES - 1]
            rng.shuffle(options)
            options.insert(pos, fact.object)
            qid = f"{cell}_{fact.relation}_{fact.subject}"
            for lang, rows in (("en", en_rows), ("ko", ko_rows)):
                rows.append({"id": qid, "question": question_text(world, fact, lang),
                             "choices": {"text": [world.surface(k, lang) for k in options], "label": list(LABELS)},
                             "answerKey": LABELS[pos]})
            out["eval/facts.jsonl"].append({
                "id": qid, "cell": cell, "subject": fact.subject, "relation": fact.relation, "object": fact.object,
                "subject_en": world.surface(fact.subject, "en"), "subject_ko": world.surface(fact.subject, "ko"),
                "object_en": world.surface(fact.object, "en"), "object_ko": world.surface(fact.object, "ko"),
                "question_en": en_rows[-1]["question"], "question_ko": ko_rows[-1]["question"],
                "choices": options, "answerKey": LABELS[pos]})
        out[f"eval/{cell}_en.jsonl"] = en_rows
        out[f"eval/{cell}_ko.jsonl"] = ko_rows
    return out
