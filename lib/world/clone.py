"""The clone Korean of the toy world: every English word has exactly one Hangul word, and back.

The distance between the toy Korean and English is a parameter of the world (``korean_style``):

- ``clone``: each English word is replaced by its Korean word, same order, same spaces and
  punctuation ("Minsu lives in Busan." -> "민수 <lives> <in> 부산."). Names and entities keep their
  real Korean forms (민수, 부산, 의사); every other word gets a two-syllable pseudo-word. With one
  token per word on each side, a Korean sentence is a token-for-token image of its English one,
  which is what lets stage 02's ``oracle`` control copy English rows onto Korean ones;
- ``clone_sov``: the same words, with the verbs (``lexicon.VERBS``) moved to the end of the
  sentence, as Korean is verb-final;
- ``toy``: the realistic toy Korean, written from its own templates with particles (민수는
  부산에 산다.); there is no word map.

``Question`` and ``Answer`` map to 질문 and 정답, so the Korean evaluation prompt of 07
(``질문: {q}\\n정답:``) is exactly the clone of the English one (``Question: {q}\\nAnswer:``).

Usage::

    from lib.world.clone import WordMap
    wm = WordMap.build()
    wm.translate("Minsu lives in Busan.")              # '민수 … … 부산.'
    wm.translate("Where does Minsu live?", sov=True)   # verbs last
    wm.pairs()                                         # [(english word, korean word), ...]
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from . import lexicon as lx

STYLES = ("clone", "clone_sov", "toy")
FIXED = {"Question": "질문", "Answer": "정답"}
WORD = re.compile(r"[A-Za-z]+")
_SLOT = re.compile(r"\{[^}]*\}")
# Syllables of the pseudo-words: common open and closed syllables, none a particle on its own.
SYLLABLES = ("가나다라마바사아자차카타파하거너더러머버서어저처커터퍼허고노도로모보소오조초코토포호"
             "구누두루무부수우주추쿠투푸후기니디리미비시이지치키티피히간난단란만반산안잔찬칸탄판한"
             "곤논돈론몬본손온존촌콘톤폰혼근는든른믄븐슨은즌츤큰튼픈흔길닐딜릴밀빌실일질칠킬틸필힐")


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"korean_style must be one of {STYLES}, got {style!r}")
    return style


def english_words() -> list[str]:
    """Every English word the toy world can write, in a fixed order (lexicon order, deduplicated)."""
    texts: list[str] = []
    texts += [en for en, _ in lx.PEOPLE]
    for items in lx.CATEGORIES.values():
        texts += [en for en, _ in items]
    texts += [en for en, _ in lx.DAYS]
    for templates in list(lx.FACT_TEMPLATES.values()) + list(lx.ATTRIBUTE_TEMPLATES.values()) \
            + list(lx.CATEGORY_TEMPLATES.values()) + [lx.PAIR_TEMPLATES]:
        texts += [en for en, _ in templates]
    texts += [en for en, _ in lx.QUESTION_TEMPLATES.values()]
    texts += [lx.INSTRUCTION_TEMPLATES["describe"][0], lx.INSTRUCTION_TEMPLATES["translate"][0],
              lx.INSTRUCTION_TEMPLATES["translate_en"], "a an", " ".join(FIXED)]
    seen: dict[str, None] = {}
    for text in texts:
        for w in WORD.findall(_SLOT.sub(" ", text)):
            seen.setdefault(w, None)
    return list(seen)


def _entity_forms() -> dict[str, str]:
    forms = {en: ko for en, ko in lx.PEOPLE}
    for items in lx.CATEGORIES.values():
        forms.update(dict(items))
    forms.update(dict(lx.DAYS))
    return forms


@dataclass(frozen=True)
class WordMap:
    """A one-to-one map between the English words of the world and Korean words."""
    en_to_ko: dict[str, str]

    @classmethod
    def build(cls, seed: str = "clone") -> "WordMap":
        """The map: entity words keep their Korean forms, the rest get distinct pseudo-words.

        A pseudo-word never contains, and is never contained in, another Korean word of the map,
        so substring search on Korean text (the leak guard) stays exact.
        """
        forms = _entity_forms()
        en_to_ko: dict[str, str] = {}
        for w in english_words():
            if w in FIXED:
                en_to_ko[w] = FIXED[w]
            elif w in forms:
                en_to_ko[w] = forms[w]
        taken = list(en_to_ko.values())
        rng = random.Random(seed)
        for w in english_words():
            if w in en_to_ko:
                continue
            while True:
                cand = "".join(rng.choice(SYLLABLES) for _ in range(2))
                if not any(cand in t or t in cand for t in taken):
                    break
            en_to_ko[w] = cand
            taken.append(cand)
        if len(set(en_to_ko.values())) != len(en_to_ko):
            raise ValueError("clone word map is not one-to-one (two English words share a Korean form)")
        return cls(en_to_ko)

    def pairs(self) -> list[tuple[str, str]]:
        return list(self.en_to_ko.items())

    def word(self, en: str) -> str:
        try:
            return self.en_to_ko[en]
        except KeyError:
            raise KeyError(f"clone Korean has no word for English {en!r}: add the template or entity "
                           "to lib/world/lexicon.py (clone.english_words reads them)") from None

    def translate(self, en: str, sov: bool = False) -> str:
        """The clone Korean of an English sentence (or phrase); ``sov`` moves verbs to the end."""
        if sov:
            en = verbs_last(en)
        return WORD.sub(lambda m: self.word(m.group()), en)


def verbs_last(sentence: str) -> str:
    """``sentence`` with its verbs (``lexicon.VERBS``) moved, in order, before the final punctuation.

    Words are the space-separated chunks; the final ``.``/``?`` stays last. Text without a verb
    is returned unchanged.
    """
    body, end = sentence, ""
    while body and body[-1] in ".?!":
        body, end = body[:-1], body[-1] + end
    chunks = body.split(" ")
    verbs = [c for c in chunks if c in lx.VERBS]
    if not verbs:
        return sentence
    others = [c for c in chunks if c not in lx.VERBS]
    return " ".join(others + verbs) + end
