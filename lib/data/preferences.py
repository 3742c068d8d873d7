"""Preference pairs for DPO (stage 06's optional second step, :mod:`lib.train.dpo`): read, built, split.

A pair is ``{prompt, chosen, rejected, lang, kind}``: ``prompt`` is the user's message as 06 puts
it in its template (instruction, then ``input_sep`` and the input when there is one), ``chosen``
and ``rejected`` are two answers to it. Real data: a JSONL file, one object a line::

    {"prompt": "민수는 어디에 살아요?", "chosen": "민수는 부산에 살아요.", "rejected": "Minsu lives in Busan.", "lang": "ko"}

``lang`` is optional (detected from the prompt as 06 does); ``kind`` is optional too (``file`` by
default) and only groups the metrics. Errors name the file and line.

The toy world's pairs are built from 00's files (:func:`toy_pairs`), each with a meaning:

- ``fact``: a short-answer question about a bridge person (an instruction record with no input
  whose output is one entity); chosen the right entity, rejected another entity of the same
  category in the same language (seeded), e.g. *Where does Jiho live?* Busan > Daegu;
- ``language``: a Korean such question; chosen the Korean name, rejected the English name of the
  same entity (language consistency: the right fact in the wrong language is still worse).

Questions that 07 evaluates (``eval/facts.jsonl``: every cell, both languages) are never used;
the toy world guarantees there are none among its instructions, and ``toy_pairs`` counts and drops
any it finds. :func:`split_pairs` holds out a share of the *prompts* (every pair of a prompt goes
to the same side) for reward accuracy and margins.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lib.data.instructions import Example, Template, detect_lang, encode

KINDS = ("fact", "language", "consistency")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
    return rows


def check_pair(rec, where: str) -> dict:
    """A validated pair: non-empty strings ``prompt``, ``chosen``, ``rejected`` (the two answers
    different), optional string ``lang`` and ``kind``."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with prompt, chosen, rejected, got {type(rec).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"{where}: '{key}' must be a non-empty string, got {rec.get(key)!r:.60}")
    if rec["chosen"].strip() == rec["rejected"].strip():
        raise ValueError(f"{where}: 'chosen' and 'rejected' are the same answer; a pair must prefer one of two")
    for key in ("lang", "kind"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {rec[key]!r}")
    return {"prompt": rec["prompt"].strip(), "chosen": rec["chosen"].strip(), "rejected": rec["rejected"].strip(),
            "lang": rec.get("lang") or detect_lang(rec["prompt"]), "kind": rec.get("kind") or "file"}


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs of a JSONL file (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: preference pairs are read from JSON Lines (.jsonl), one "
                         "{prompt, chosen, rejected} object a line")
    out = [check_pair(rec, f"{path}:{i}") for i, rec in _read_jsonl(path)]
    if not out:
        raise ValueError(f"{path}: no preference pair")
    return out


def eval_questions(facts_file: str | Path) -> set[str]:
    """Every question 07 asks on the toy world, in both languages (``eval/facts.jsonl``)."""
    return {r[k].strip() for _, r in _read_jsonl(Path(facts_file)) for k in ("question_en", "question_ko")}


def read_entities(entities_file: str | Path) -> list[dict]:
    """The toy world's ``data/entities.jsonl``: ``{key, category, en, ko, role}`` per entity."""
    return [e for _, e in _read_jsonl(Path(entities_file))]


def toy_pairs(instructions_file: str | Path, entities_file: str | Path, facts_file: str | Path,
              seed: int, exclude: Iterable[str] = ()) -> tuple[list[dict], dict]:
    """The toy world's ``fact`` and ``language`` pairs (module docstring) and a report of counts.

    ``exclude``: instructions not to use (besides the evaluated questions, always dropped)."""
    entities = read_entities(entities_file)
    by_name = {(lang, e[lang]): e for e in entities for lang in ("en", "ko")}
    by_cat: dict[str, list[dict]] = {}
    for e in entities:
        by_cat.setdefault(e["category"], []).append(e)
    evaluated = eval_questions(facts_file)
    excluded = {x.strip() for x in exclude}
    rng = random.Random(f"{seed}:dpo_pairs")
    pairs: list[dict] = []
    report = {"qa_records": 0, "dropped_evaluated": 0, "dropped_excluded": 0}
    for i, rec in _read_jsonl(Path(instructions_file)):
        where = f"{instructions_file}:{i}"
        lang = rec.get("lang") or detect_lang(rec.get("instruction", ""))
        ent = by_name.get((lang, (rec.get("output") or "").strip()))
        if rec.get("input") or rec.get("history") or ent is None:
            continue                   # translations and descriptions: no single right entity
        report["qa_records"] += 1
        prompt = rec["instruction"].strip()
        if prompt in evaluated:
            report["dropped_evaluated"] += 1
            continue
        if prompt in excluded:
            report["dropped_excluded"] += 1
            continue
        others = [e for e in by_cat[ent["category"]] if e["key"] != ent["key"]]
        if not others:
            raise ValueError(f"{where}: category {ent['category']!r} has one entity only: no wrong answer to prefer against")
        wrong = rng.choice(others)
        pairs.append({"prompt": prompt, "chosen": ent[lang], "rejected": wrong[lang], "lang": lang, "kind": "fact"})
        if lang == "ko" and ent["ko"] != ent["en"]:
            pairs.append({"prompt": prompt, "chosen": ent["ko"], "rejected": ent["en"], "lang": "ko", "kind": "language"})
    report.update(pairs=len(pairs), **{f"pairs_{k}": sum(p["kind"] == k for p in pairs) for k in KINDS})
    return pairs, report


def split_pairs(pairs: Sequence[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): ``share`` of the distinct prompts (seeded) with all their pairs held out."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share of pairs must be in [0, 1), got {share}")
    prompts = sorted({p["prompt"] for p in pairs})
    n = round(share * len(prompts))
    held = {prompts[i] for i in np.random.default_rng([seed, 61]).permutation(len(prompts))[:n].tolist()}
    train = [p for p in pairs if p["prompt"] not in held]
    if not train:
        raise ValueError(f"no preference pair left to train on after holding out {share:.0%} of the prompts")
    return train, [p for p in pairs if p["prompt"] in held]


def counts(pairs: Sequence[dict]) -> dict:
    """Pairs per kind and per language."""
    out: dict = {"pairs": len(pairs), "by_kind": {}, "by_lang": {}}
    for p in pairs:
        out["by_kind"][p["kind"]] = out["by_kind"].get(p["kind"], 0) + 1
        out["by_lang"][p["lang"]] = out["by_lang"].get(p["lang"], 0) + 1
    return out


def _rec(p: dict, side: str) -> dict:
    return {"instruction": p["prompt"], "input": "", "output": p[side], "history": [], "lang": p["lang"]}


def encode_pairs(tok, pairs: Sequence[dict], template: Template, max_len: int
                 ) -> tuple[list[tuple[Example, Example]], list[dict], dict]:
    """(chosen, rejected) examples tokenized exactly as 06 tokenizes a record whose instruction is
    the prompt (:func:`lib.data.instructions.encode`: BOS, the rendered user turn, the answer, EOS; the
    mask covers the answer and EOS), the pairs kept, and ``{dropped_too_long, truncated}``: longer
    sequences are cut at ``max_len`` and a pair goes when either answer has no token left."""
    sides = [encode(tok, [_rec(p, side) for p in pairs], template, 10**9)[0] for side in ("chosen", "rejected")]
    out, kept, report = [], [], {"dropped_too_long": 0, "truncated": 0}
    for p, c, r in zip(pairs, *sides):
        cut = [Example(e.ids[:max_len], e.mask[:max_len], e.lang, len(e.ids) > max_len) for e in (c, r)]
        if not all(any(e.mask) for e in cut):
            report["dropped_too_long"] += 1
            continue
        report["truncated"] += int(any(e.truncated for e in cut))
        out.append((cut[0], cut[1]))
        kept.append(p)
    return out, kept, report
