"""Word pairs (an English word and its Korean counterpart): read a dictionary, or extract one from a
parallel corpus, and find the pairs inside a sentence pair.

Stage 03's word-level objective and ``align_head``, and stage 05's code-switching, read a word-pair
file: JSONL, one ``{"en": "doctor", "ko": "의사"}`` a line (a TSV ``doctor<TAB>의사`` is read too).
The toy world writes ``data/word_map.jsonl`` on its clone styles; for real data give a bilingual
dictionary, or extract one from the parallel corpus you train stage 1 on::

    python -m lib.cli.wordpairs ../shared/data/parallel/train.ko ../shared/data/parallel/train.en \\
        -o data/word_pairs.jsonl --min-count 3 --min-dice 0.3

Extraction is co-occurrence statistics, not an aligner: for each English word, the Korean
*eojeol stem* (a whitespace word, or its first 1..n-1 syllables, so 학교에 / 학교는 count for 학교)
with the highest Dice coefficient over sentence pairs, kept when both counts and the Dice reach the
thresholds and the pair is each other's best match. It finds names and frequent content words; it
misses words that are rare in the corpus. Check the top of the file by eye before training on it.

In a sentence, an English word matches a whole word (case-insensitive, edge punctuation aside); a
Korean word matches the start of an eojeol (particles follow: 학교 matches 학교에).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from lib.core.io import write_text

_WORD = re.compile(r"\S+")
_EDGE = re.compile(r"^[\"'(\[{«“‘]*(.*?)[\"')\]}».,?!:;…”’]*$")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``[(en, ko), ...]`` in file order, duplicates dropped; a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no word-pair file (JSONL, one {{\"en\": ..., \"ko\": ...}} a line, "
                                "or TSV en<TAB>ko); the toy world writes data/word_map.jsonl on its clone "
                                "styles, python -m lib.cli.wordpairs extracts one from a parallel corpus")
    out, seen = [], set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            if line.lstrip().startswith("{"):
                row = json.loads(line)
                en, ko = str(row["en"]).strip(), str(row["ko"]).strip()
            else:
                en, ko = (s.strip() for s in line.split("\t"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{i}: expected {{\"en\": ..., \"ko\": ...}} or en<TAB>ko ({e})") from e
        if not en or not ko or " " in en or " " in ko:
            raise ValueError(f"{path}:{i}: a word pair needs one word on each side, got {en!r} / {ko!r}")
        if (en, ko) not in seen:
            seen.add((en, ko))
            out.append((en, ko))
    if not out:
        raise ValueError(f"{path}: no word pairs")
    return out


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]], scores: Sequence[dict] | None = None) -> Path:
    rows = []
    for i, (en, ko) in enumerate(pairs):
        rows.append(json.dumps({"en": en, "ko": ko, **(scores[i] if scores else {})}, ensure_ascii=False))
    return write_text(Path(path), "".join(r + "\n" for r in rows))


def _clean(word: str) -> str:
    return _EDGE.match(word).group(1)


def words_with_spans(text: str) -> list[tuple[str, int, int]]:
    """Whitespace words of ``text`` without edge punctuation, with their character spans."""
    out = []
    for m in _WORD.finditer(text):
        raw = m.group(0)
        core = _clean(raw)
        if not core:
            continue
        a = m.start() + raw.index(core)
        out.append((core, a, a + len(core)))
    return out


class Locator:
    """Finds the dictionary's words in a sentence: ``find_en`` / ``find_ko`` give
    ``[(pair_id, char_start, char_end), ...]``. An English word may belong to several pairs (one
    entry per pair); a Korean eojeol matches its longest dictionary prefix."""

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        self.pairs = list(pairs)
        self.en: dict[str, list[int]] = {}
        self.ko: dict[str, list[int]] = {}
        for i, (en, ko) in enumerate(self.pairs):
            self.en.setdefault(en.lower(), []).append(i)
            self.ko.setdefault(ko, []).append(i)
        self.max_ko = max(len(k) for k in self.ko)

    def find_en(self, text: str) -> list[tuple[int, int, int]]:
        return [(i, a, b) for w, a, b in words_with_spans(text) for i in self.en.get(w.lower(), ())]

    def find_ko(self, text: str) -> list[tuple[int, int, int]]:
        out = []
        for w, a, _ in words_with_spans(text):
            for n in range(min(len(w), self.max_ko), 0, -1):
                if w[:n] in self.ko:
                    out += [(i, a, a + n) for i in self.ko[w[:n]]]
                    break
        return out

    def aligned(self, ko: str, en: str) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
        """The pairs found exactly once on each side: ``[(pair_id, ko_span, en_span), ...]``
        (a word seen twice on a side has no single position to align)."""
        k, e = self.find_ko(ko), self.find_en(en)
        ck, ce = Counter(i for i, *_ in k), Counter(i for i, *_ in e)
        ko_at = {i: (a, b) for i, a, b in k if ck[i] == 1}
        en_at = {i: (a, b) for i, a, b in e if ce[i] == 1}
        return [(i, ko_at[i], en_at[i]) for i in sorted(ko_at.keys() & en_at.keys())]


def _ko_stems(word: str) -> set[str]:
    """The eojeol and its syllable prefixes (at least one Hangul syllable): candidates for a stem."""
    if not _HANGUL.search(word):
        return set()
    return {word[:n] for n in range(1, len(word) + 1)}


def extract(ko_lines: Sequence[str], en_lines: Sequence[str], min_count: int = 3, min_dice: float = 0.3,
            max_pairs: int = 0) -> tuple[list[tuple[str, str]], list[dict]]:
    """Word pairs from a line-aligned parallel corpus by Dice co-occurrence (see the module doc).

    Returns the pairs, best first, and per pair ``{dice, count_en, count_ko, count_both}``."""
    if len(ko_lines) != len(en_lines):
        raise ValueError(f"parallel corpus has {len(ko_lines)} Korean and {len(en_lines)} English lines")
    en_sets = [{w.lower() for w, *_ in words_with_spans(s) if w.isalpha()} for s in en_lines]
    ko_sets = [set().union(*(_ko_stems(w) for w, *_ in words_with_spans(s))) for s in ko_lines]
    cen, cko, both = Counter(), Counter(), Counter()
    for e, k in zip(en_sets, ko_sets):
        cen.update(e)
        cko.update(k)
    frequent_en = {w for w, c in cen.items() if c >= min_count}
    frequent_ko = {w for w, c in cko.items() if c >= min_count}
    for e, k in zip(en_sets, ko_sets):
        ee, kk = e & frequent_en, k & frequent_ko
        for w in ee:
            for s in kk:
                both[w, s] += 1

    def dice(w: str, s: str) -> float:
        return 2 * both[w, s] / (cen[w] + cko[s])

    best_ko: dict[str, tuple[float, int, str]] = {}
    best_en: dict[str, tuple[float, str]] = {}
    for (w, s), n in both.items():
        if n < min_count:
            continue
        d = dice(w, s)
        # prefer the longer stem on ties: 학교 over 학 when both always co-occur
        key = (d, len(s), s)
        if w not in best_ko or key > best_ko[w]:
            best_ko[w] = key
        if s not in best_en or (d, w) > best_en[s]:
            best_en[s] = (d, w)
    rows = []
    for w, (d, _, s) in best_ko.items():
        if d >= min_dice and best_en[s][1] == w:
            rows.append((d, w, s))
    rows.sort(key=lambda r: (-r[0], r[1]))
    if max_pairs:
        rows = rows[:max_pairs]
    pairs = [(w, s) for _, w, s in rows]
    scores = [{"dice": round(d, 4), "count_en": cen[w], "count_ko": cko[s], "count_both": both[w, s]}
              for d, w, s in rows]
    return pairs, scores


def precision_against(found: Sequence[tuple[str, str]], truth: Sequence[tuple[str, str]]) -> float:
    """Share of ``found`` pairs that are in ``truth`` (case-insensitive English)."""
    gold = {(en.lower(), ko) for en, ko in truth}
    return sum((en.lower(), ko) in gold for en, ko in found) / max(len(found), 1)
