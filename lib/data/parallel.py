"""Instructions given in both languages: stage 06's ``parallel_share`` (issue 25).

A parallel file is an instruction file (:func:`lib.data.instructions.read_records`) whose records
carry ``pair``: the records of one item, one per language, share it. The toy world writes one
(``data/instructions_parallel.jsonl``: every QA-trained bridge fact asked in English and in
Korean); real data can be any such JSONL::

    {"instruction": "Where does Jiho live?", "input": "", "output": "Busan", "lang": "en", "pair": 7}
    {"instruction": "지호는 어디에 살아요?", "input": "", "output": "부산", "lang": "ko", "pair": 7}

:func:`parallel_records` draws enough items that they make ``share`` of 06's training records,
as two records each:

- ``both``: the English record and the Korean record, each on its own;
- ``cross``: the English record, and the Korean one as the second turn of a conversation whose
  first turn is the English exchange (the Korean answer learned next to the English one).

Items whose question 07 evaluates, or that 06 holds out, are never drawn (``exclude``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from lib.data.instructions import read_records

MODES = ("both", "cross")


def read_parallel(path: str | Path) -> list[tuple[dict, dict]]:
    """``(english, korean)`` records per item, in file order; an item without exactly one record in
    each language is an error naming the file and the pair."""
    items: dict = {}
    for i, rec in enumerate(read_records(path), 1):
        if "pair" not in rec:
            raise ValueError(f"{path}: record {i} has no 'pair' (a parallel file's records of one item share it)")
        items.setdefault(rec["pair"], {}).setdefault(rec["lang"], []).append(rec)
    out = []
    for pair, by_lang in items.items():
        if sorted(by_lang) != ["en", "ko"] or any(len(v) != 1 for v in by_lang.values()):
            have = {k: len(v) for k, v in by_lang.items()}
            raise ValueError(f"{path}: pair {pair!r} must have one 'en' and one 'ko' record, has {have}")
        out.append((by_lang["en"][0], by_lang["ko"][0]))
    if not out:
        raise ValueError(f"{path}: no parallel item")
    return out


def items_needed(share: float, n_train: int) -> int:
    """Items (two records each) that make ``share`` of ``n_train + 2 * items`` records."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"parallel_share must be in [0, 1), got {share}")
    return int(round(share * n_train / (2.0 * (1.0 - share))))


def parallel_records(items: list[tuple[dict, dict]], share: float, n_train: int, seed: int,
                     mode: str = "both", exclude: Iterable[str] = ()) -> tuple[list[dict], dict]:
    """The records to add to 06's training set, and a report (items available, drawn, excluded,
    the realised share). Seeded: the same seed draws the same items."""
    if mode not in MODES:
        raise ValueError(f"parallel_mode must be one of {MODES}, got {mode!r}")
    excluded = {x.strip() for x in exclude}
    usable = [(en, ko) for en, ko in items
              if en["instruction"].strip() not in excluded and ko["instruction"].strip() not in excluded]
    want = items_needed(share, n_train)
    order = np.random.default_rng([seed, 25]).permutation(len(usable))[:want].tolist()
    out: list[dict] = []
    for k in sorted(order):
        en, ko = usable[k]
        out.append({**en, "history": []})
        if mode == "both":
            out.append({**ko, "history": []})
        else:
            user = en["instruction"] + ("\n" + en["input"] if en["input"] else "")
            out.append({**ko, "history": [[user, en["output"]]]})
    report = {"items": len(items), "excluded": len(items) - len(usable), "drawn": len(order), "wanted": want,
              "mode": mode, "records": len(out), "share": len(out) / max(n_train + len(out), 1)}
    return out, report
