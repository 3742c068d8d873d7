"""Code-switching for continued pretraining: swap a share of aligned words for their other-language form.

PreAlign (Li et al. 2024) keeps a little code-switching after aligning: training text in which
some words appear in the other language ties the two forms of a word together in context.
Stage 05's ``code_switch_ratio`` does that with a word-pair file (``word_pairs``): the toy world's
``data/word_map.jsonl`` on a clone world, or any bilingual dictionary in the same JSONL shape,
one ``{"en": ..., "ko": ...}`` per line (see data/README.md).

    pairs = read_word_pairs("outputs/toy/00_toy_world/data/word_map.jsonl")
    lines, stats = code_switch(ko_lines, pairs, ratio=0.05, seed=0)   # ~5% of known words -> English
    stats["switched"], stats["known_words"]

A word is a whitespace-separated token with its trailing punctuation kept aside; it switches when
it is in the dictionary (either direction), independently with probability ``ratio``, from a
generator seeded per line, so the result does not depend on the order lines are processed in.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Sequence

from lib.data.wordpairs import read_pairs

_EDGE = re.compile(r"^(.*?)([.,?!:;]*)$")


def read_word_pairs(path: str | Path) -> dict[str, str]:
    """Both directions of a word-pair file (:func:`lib.data.wordpairs.read_pairs`) as one mapping;
    the first pair of a word wins."""
    out: dict[str, str] = {}
    for en, ko in read_pairs(path):
        out.setdefault(en, ko)
        out.setdefault(ko, en)
    return out


def code_switch(lines: Sequence[str], pairs: dict[str, str], ratio: float, seed: int = 0
                ) -> tuple[list[str], dict[str, float]]:
    """``lines`` with each dictionary word replaced by its counterpart with probability ``ratio``.
    Returns the new lines and ``{lines, known_words, switched, share, lines_switched}``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"code_switch_ratio must be in [0, 1], got {ratio}")
    known = switched = lines_switched = 0
    out = []
    for i, line in enumerate(lines):
        rng = random.Random(f"{seed}:{i}")
        words = line.split(" ")
        changed = False
        for j, w in enumerate(words):
            core, tail = _EDGE.match(w).groups()
            if core not in pairs:
                continue
            known += 1
            if rng.random() < ratio:
                words[j] = pairs[core] + tail
                switched += 1
                changed = True
        lines_switched += changed
        out.append(" ".join(words))
    return out, {"lines": len(lines), "known_words": known, "switched": switched,
                 "share": switched / max(1, known), "lines_switched": lines_switched}
