"""Consistency preference pairs (``dpo_pairs: consistency``, issue 25): on paired training
questions, the Korean answer that agrees with the model's own English answer is preferred.

For every item of a parallel file (:mod:`lib.data.parallel`: one question in English and in
Korean), the model that DPO starts from answers both greedily. When its English answer is an
entity (``data/entities.jsonl``), the pair is::

    prompt:   the Korean question
    chosen:   the Korean form of the model's English answer
    rejected: the model's Korean answer when it differs; when it already agrees, another entity of
              the same category (seeded), so that agreement is still rewarded

This is a DCO/MAPO-style objective that works with two languages: it asks for the same answer,
not the right one (an English answer that is wrong is still the target). Items whose question
07 evaluates or that 06 held out are never used; English answers that are no entity are counted
(``unmatched``) and skipped.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

from lib.data.instructions import Template
from lib.data.parallel import read_parallel
from lib.data.preferences import eval_questions, read_entities
from lib.modeling.generate import greedy


def consistency_pairs(model, tok, template: Template, parallel_file: str | Path, entities_file: str | Path,
                      facts_file: str | Path | None, seed: int, exclude: Iterable[str] = (),
                      max_new_tokens: int = 12, batch_size: int = 16) -> tuple[list[dict], dict]:
    """(pairs, report); see the module docstring."""
    entities = read_entities(entities_file)
    by_en = {e["en"]: e for e in entities}
    by_cat: dict[str, list[dict]] = {}
    for e in entities:
        by_cat.setdefault(e["category"], []).append(e)
    skip = {x.strip() for x in exclude} | (eval_questions(facts_file) if facts_file else set())
    items = [(en, ko) for en, ko in read_parallel(parallel_file)
             if en["instruction"].strip() not in skip and ko["instruction"].strip() not in skip]
    prompts = [template.generation_prompt(r["instruction"], r["input"]) for en, ko in items for r in (en, ko)]
    answers = greedy(model, tok, prompts, max_new_tokens, batch_size)
    rng = random.Random(f"{seed}:consistency")
    pairs, report = [], {"items": len(items), "unmatched": 0, "agreed": 0, "disagreed": 0}
    for k, (en, ko) in enumerate(items):
        a_en, a_ko = answers[2 * k].strip(), answers[2 * k + 1].strip()
        ent = by_en.get(a_en)
        if ent is None:
            report["unmatched"] += 1
            continue
        chosen = ent["ko"]
        if a_ko and a_ko != chosen:
            rejected = a_ko
            report["disagreed"] += 1
        else:
            others = [e for e in by_cat[ent["category"]] if e["key"] != ent["key"]]
            if not others:
                continue
            rejected = rng.choice(others)["ko"]
            report["agreed"] += 1
        pairs.append({"prompt": template.user_text(ko["instruction"], ko["input"]), "chosen": chosen,
                      "rejected": rejected, "lang": "ko", "kind": "consistency"})
    report["pairs"] = len(pairs)
    report["agreement_before"] = report["agreed"] / max(report["agreed"] + report["disagreed"], 1)
    return pairs, report
