"""Korean particles (josa) chosen by the final consonant (batchim) of the word they follow.

Korean writes many particles in two shapes, one after a consonant, one after a vowel:
은/는 (topic), 이/가 (subject), 을/를 (object), 과/와 ("and/with"), 으로/로 ("to/as", where a final
ㄹ takes 로 like a vowel), 이다/다 (copula) and 이에요/예요 (polite copula).

The final consonant is read with Hangul syllable arithmetic: a precomposed syllable in
U+AC00..U+D7A3 is ``0xAC00 + (initial * 21 + medial) * 28 + final``, so ``(code - 0xAC00) % 28``
is the index of its final consonant (0 = none, 8 = ㄹ).

Words that do not end in Hangul (documented heuristic, since the toy lexicons are all Hangul):
- trailing punctuation, spaces and brackets are skipped; the last letter or digit decides;
- a digit is read the Sino-Korean way: 0 영, 1 일, 3 삼, 6 육, 7 칠, 8 팔 end in a consonant
  (1, 7, 8 in ㄹ), 2 이, 4 사, 5 오, 9 구 end in a vowel;
- a Latin letter: ``l`` counts as ㄹ (``Seoul로``), ``m n b c d g k p t`` as another consonant,
  anything else (vowels, silent ``e``, ``r``, ``s``, ``x`` ...) as a vowel. English spelling does not
  fix pronunciation, so this is only a convention, good for names like ``Google``/``Kim``/``Lee``;
- a word with no letter or digit at all counts as vowel-final.

Usage::

    from lib.world.korean import josa, fill
    josa("민수", "은/는")          # '민수는'
    josa("서울", "으로/로")         # '서울로'
    fill("{s|은/는} {o|을/를} 좋아한다.", s="지훈", o="사과")   # '지훈은 사과를 좋아한다.'
"""
from __future__ import annotations

import re

HANGUL_FIRST = 0xAC00
HANGUL_LAST = 0xD7A3
RIEUL = 8  # index of ㄹ among the 28 finals

# Sino-Korean readings of the digits: final index of 영 일 이 삼 사 오 육 칠 팔 구.
_DIGIT_FINAL = {"0": 21, "1": RIEUL, "2": 0, "3": 16, "4": 0, "5": 0, "6": 1, "7": RIEUL,
                "8": RIEUL, "9": 0}
_LATIN_CONSONANT_FINAL = {c: 4 for c in "mnbcdgkpt"}  # any non-ㄹ consonant; 4 is ㄴ
_LATIN_CONSONANT_FINAL["l"] = RIEUL

# Each particle pair: (after a consonant, after a vowel). 으로/로 is special: ㄹ acts as a vowel.
PARTICLES = {
    "은/는": ("은", "는"),
    "이/가": ("이", "가"),
    "을/를": ("을", "를"),
    "과/와": ("과", "와"),
    "으로/로": ("으로", "로"),
    "이다/다": ("이다", "다"),
    "이에요/예요": ("이에요", "예요"),
    "이랑/랑": ("이랑", "랑"),
}
# Accept either order of writing a pair ("는/은" as well as "은/는").
_ALIASES = {"/".join(reversed(k.split("/"))): k for k in PARTICLES}


def is_hangul_syllable(ch: str) -> bool:
    """True for a precomposed Hangul syllable (가..힣)."""
    return len(ch) == 1 and HANGUL_FIRST <= ord(ch) <= HANGUL_LAST


def final_index(word: str) -> int:
    """Index (0..27) of the final consonant of ``word``'s last sounding character; 0 means none.

    Non-Hangul endings follow the heuristic in the module docstring.
    """
    for ch in reversed(word):
        if is_hangul_syllable(ch):
            return (ord(ch) - HANGUL_FIRST) % 28
        if ch in _DIGIT_FINAL:
            return _DIGIT_FINAL[ch]
        if ch.isascii() and ch.isalpha():
            return _LATIN_CONSONANT_FINAL.get(ch.lower(), 0)
        if ch.isalnum():  # another script: no rule we can trust, treat as a vowel
            return 0
    return 0


def has_batchim(word: str) -> bool:
    """True when ``word`` ends in a consonant (any batchim, ㄹ included)."""
    return final_index(word) != 0


def particle(word: str, pair: str) -> str:
    """The shape of particle ``pair`` (e.g. ``"을/를"``) that follows ``word``."""
    key = pair if pair in PARTICLES else _ALIASES.get(pair)
    if key is None:
        raise ValueError(f"unknown particle pair {pair!r}; known: {', '.join(PARTICLES)}")
    after_consonant, after_vowel = PARTICLES[key]
    final = final_index(word)
    if key == "으로/로":
        # ㄹ-final words take 로 (서울로, 하늘로), like vowel-final ones (대구로).
        return after_vowel if final in (0, RIEUL) else after_consonant
    return after_consonant if final else after_vowel


def josa(word: str, pair: str) -> str:
    """``word`` followed by the right shape of ``pair``: ``josa("책", "과/와") == "책과"``."""
    return word + particle(word, pair)


_SLOT = re.compile(r"\{(\w+)(?:\|([^}]+))?\}")


def fill(template: str, **values: str) -> str:
    """Fill ``{name}`` and ``{name|은/는}`` slots of a Korean template.

    ``{name|PAIR}`` inserts the value followed by the particle shape that agrees with it.
    A slot whose name is not given raises ``KeyError`` naming the slot and the template.
    """
    def replace(m: re.Match) -> str:
        name, pair = m.group(1), m.group(2)
        if name not in values:
            raise KeyError(f"template {template!r} needs a value for slot {name!r}")
        return josa(values[name], pair) if pair else values[name]

    return _SLOT.sub(replace, template)
