"""The generic paired multiple-choice shape: which fields of a record are the question, the
context, the options, the answer and the id, and the prompt per language (:mod:`lib.eval.tasks`).

A pair's ``format`` is a preset name (``arc``, ``belebele``) or a mapping of this shape::

    format:
      question: sentence1          # field of the question (a dotted path: choices.text)
      context: sentence2           # optional: field of a passage; the template places it
      choices: {en: ["no", "yes"], ko: [아니요, 예]}   # the same labels on every item, per language;
                                   # or a field holding the option list (choices.text);
                                   # or a list of fields, one per option ([mc_answer1, mc_answer2])
      answer: label                # field of the gold answer: the option's index, counted from
      answer_base: 0               #   answer_base (0, or 1 as Belebele's correct_answer_num)
      labels: choices.label        # optional, instead: the field of the option labels; the
                                   #   answer is then one of them (ARC's answerKey)
      id: id                       # field of the id joining the languages (default id), or a
                                   #   list of fields joined with '#' ([link, question_number])
      template: {en: "Sentence 1: {question}\\nSentence 2: {context}\\nSame meaning?",
                 ko: "문장 1: {question}\\n문장 2: {context}\\n같은 뜻인가요?"}
      answer_prefix: {en: "Answer:", ko: "정답:"}   # default; after the template, on its own line
      strip: [question]            # optional: slots whose text is stripped of outer whitespace
      preset: belebele             # optional: start from a preset, the keys given replace its own

The prompt lm-eval scores each option after is ``template + "\\n" + answer_prefix`` (no newline
when the prefix is empty), with ``{question}`` / ``{context}`` replaced by the fields' text; each
option is scored as ``" " + option``. Templates hold no other braces. The two presets are this
shape: their generated task YAMLs are byte-identical to the fixed formats they replace
(``tests/test_evaltasks.py`` pins them: 07 fingerprints task YAMLs, a change would re-score
every finished run).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Hashable, Mapping

LANGS = ("en", "ko")
SLOTS = ("question", "context")
SHAPE_KEYS = ("question", "context", "choices", "labels", "answer", "answer_base", "id", "template",
              "answer_prefix", "strip", "preset")
REQUIRED_KEYS = ("question", "choices", "answer", "template")
DEFAULT_PREFIX = {"en": "Answer:", "ko": "정답:"}
FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SLOT_RE = re.compile(r"\{(\w*)\}")
GENERIC = "generic"       # the format name a mapping-valued format gets (task metadata, pairs.json)

PRESETS: dict[str, dict[str, Any]] = {
    # the kollm_evaluation prompts; options choices.text; gold = index of answerKey in choices.label
    "arc": {"question": "question", "choices": "choices.text", "labels": "choices.label",
            "answer": "answerKey", "template": {"en": "Question: {question}", "ko": "질문: {question}"}},
    # options are the answer texts (not letters, as for ARC); Belebele has no id column
    "belebele": {"id": ["link", "question_number"], "context": "flores_passage", "question": "question",
                 "strip": ["question"], "choices": ["mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4"],
                 "answer": "correct_answer_num", "answer_base": 1,
                 "template": {"en": "Passage: {context}\nQuestion: {question}",
                              "ko": "지문: {context}\n질문: {question}"}},
}


class PairError(ValueError):
    """A pair spec or one of its files is wrong; the message names the file, line and what to do."""


# ---------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Shape:
    """A checked format spec (see the module docstring)."""
    question: str
    choices: str | tuple[str, ...] | tuple[tuple[str, tuple[str, ...]], ...]  # field | fields | ((lang, labels),)
    answer: str
    template: tuple[tuple[str, str], ...]
    context: str | None = None
    labels: str | None = None
    answer_base: int = 0
    id: str | tuple[str, ...] = "id"
    answer_prefix: tuple[tuple[str, str], ...] = tuple(DEFAULT_PREFIX.items())
    strip: tuple[str, ...] = ()

    @property
    def fixed(self) -> dict[str, list[str]] | None:
        """The labels per language when every item offers the same ones, else None."""
        if isinstance(self.choices, tuple) and self.choices and isinstance(self.choices[0], tuple):
            return {lang: list(labels) for lang, labels in self.choices}
        return None

    def fields(self) -> list[str]:
        """Every field path the shape reads, in record order (for 'a record needs ...')."""
        out = list(self.id) if isinstance(self.id, tuple) else [self.id]
        out += [self.context] if self.context else []
        out.append(self.question)
        if self.fixed is None:
            out += [self.choices] if isinstance(self.choices, str) else list(self.choices)
        out += [self.labels] if self.labels else []
        out.append(self.answer)
        return out


def _field(value: Any, where: str) -> str:
    if not isinstance(value, str) or not FIELD_RE.fullmatch(value):
        raise PairError(f"{where}: expected a field name (letters, digits, '_'; nested fields with '.', "
                        f"e.g. choices.text), got {value!r}")
    return value


def _per_lang(value: Any, where: str, allow_empty: bool = False) -> dict[str, str]:
    if not isinstance(value, Mapping) or sorted(value) != sorted(LANGS):
        raise PairError(f"{where}: expected {{en: ..., ko: ...}} (one text per language), got {value!r}")
    for lang in LANGS:
        if not isinstance(value[lang], str) or (not allow_empty and not value[lang].strip()):
            raise PairError(f"{where}['{lang}']: expected a{'' if allow_empty else ' non-empty'} string, "
                            f"got {value[lang]!r}")
    return {lang: value[lang] for lang in LANGS}


def _choices(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return _field(value, where)
    if isinstance(value, (list, tuple)):
        if len(value) < 2:
            raise PairError(f"{where}: a list names one field per option, at least 2; got {value!r}")
        return tuple(_field(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        if sorted(value) != sorted(LANGS):
            raise PairError(f"{where}: fixed labels are {{en: [...], ko: [...]}}, got keys {sorted(value)}")
        out = []
        for lang in LANGS:
            labels = value[lang]
            if not isinstance(labels, (list, tuple)) or len(labels) < 2 or \
                    not all(isinstance(x, str) and x.strip() for x in labels):
                hint = (" (YAML reads bare yes/no/on/off as booleans: quote them, [\"no\", \"yes\"])"
                        if isinstance(labels, list) and any(isinstance(x, bool) for x in labels) else "")
                raise PairError(f"{where}['{lang}']: expected at least 2 non-empty label strings, "
                                f"got {labels!r}{hint}")
            if len(set(labels)) != len(labels):
                raise PairError(f"{where}['{lang}']: duplicate labels {labels!r}")
            out.append((lang, tuple(labels)))
        if len(out[0][1]) != len(out[1][1]):
            raise PairError(f"{where}: en has {len(out[0][1])} labels and ko {len(out[1][1])}; "
                            "the options must match one to one")
        return tuple(out)
    raise PairError(f"{where}: expected a field holding the options, a list of fields (one per option) "
                    f"or fixed labels {{en: [...], ko: [...]}}, got {value!r}")


def check_shape(value: Any, where: str) -> Shape:
    """The :class:`Shape` of a ``format`` mapping; a :class:`PairError` naming ``where`` and the key."""
    if not isinstance(value, Mapping):
        raise PairError(f"{where}: expected a preset name ({', '.join(PRESETS)}) or a mapping, got {value!r}")
    unknown = [k for k in value if k not in SHAPE_KEYS]
    if unknown:
        raise PairError(f"{where}: unknown keys {unknown} (a format has {', '.join(SHAPE_KEYS)}; "
                        "see data/README.md)")
    spec = dict(value)
    if "preset" in spec:
        preset = spec.pop("preset")
        if preset not in PRESETS:
            raise PairError(f"{where}['preset']: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        spec = {**PRESETS[preset], **spec}
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise PairError(f"{where}: missing keys {missing} (required: {', '.join(REQUIRED_KEYS)})")
    w = lambda k: f"{where}['{k}']"                                  # noqa: E731
    question = _field(spec["question"], w("question"))
    context = _field(spec["context"], w("context")) if spec.get("context") is not None else None
    choices = _choices(spec["choices"], w("choices"))
    fixed = isinstance(choices, tuple) and isinstance(choices[0], tuple)
    labels = None
    if spec.get("labels") is not None:
        if fixed:
            raise PairError(f"{w('labels')}: fixed labels in 'choices' need no 'labels' field; "
                            "give the answer as an index (answer_base)")
        labels = _field(spec["labels"], w("labels"))
    answer = _field(spec["answer"], w("answer"))
    base = spec.get("answer_base", 0)
    if isinstance(base, bool) or base not in (0, 1):
        raise PairError(f"{w('answer_base')}: expected 0 or 1 (what the first option's index is), got {base!r}")
    if labels and "answer_base" in spec:
        raise PairError(f"{w('answer_base')}: with 'labels' the answer is a label, not an index; drop one of them")
    ident = spec.get("id", "id")
    if isinstance(ident, (list, tuple)):
        if len(ident) < 2:
            raise PairError(f"{w('id')}: a list joins several fields with '#'; give one field as a string")
        ident = tuple(_field(v, f"{w('id')}[{i}]") for i, v in enumerate(ident))
    else:
        ident = _field(ident, w("id"))
    strip = spec.get("strip", [])
    if not isinstance(strip, (list, tuple)) or any(s not in SLOTS for s in strip):
        raise PairError(f"{w('strip')}: expected a list of slots among {list(SLOTS)}, got {strip!r}")
    if "context" in strip and context is None:
        raise PairError(f"{w('strip')}: 'context' is stripped but no context field is given")
    template = _per_lang(spec["template"], w("template"))
    for lang, text in template.items():
        slots = SLOT_RE.findall(text)
        bad = [s for s in slots if s not in SLOTS] + (["{ or }"] if SLOT_RE.sub("", text).count("{")
                                                      + SLOT_RE.sub("", text).count("}") else [])
        if bad:
            raise PairError(f"{w('template')}['{lang}']: only {{question}} and {{context}} may appear in "
                            f"braces, found {bad} in {text!r}")
        if "question" not in slots:
            raise PairError(f"{w('template')}['{lang}']: the template must show {{question}}: {text!r}")
        if (context is not None) != ("context" in slots):
            raise PairError(f"{w('template')}['{lang}']: " + (
                "a context field is given but the template has no {context}" if context is not None
                else "the template shows {context} but no 'context' field is given") + f": {text!r}")
    prefix = _per_lang(spec.get("answer_prefix", DEFAULT_PREFIX), w("answer_prefix"), allow_empty=True)
    return Shape(question=question, choices=choices, answer=answer, template=tuple(template.items()),
                 context=context, labels=labels, answer_base=base, id=ident,
                 answer_prefix=tuple(prefix.items()), strip=tuple(strip))


# ---------------------------------------------------------------------------- compiled: Jinja and Python


def lookup(doc: Mapping, path: str) -> Any:
    """``doc["a"]["b"]`` for ``a.b``; KeyError when a step is missing or not an object."""
    v: Any = doc
    for part in path.split("."):
        if not isinstance(v, Mapping) or part not in v:
            raise KeyError(path)
        v = v[part]
    return v


def _id_part(v: Any) -> str:
    return str(int(v)) if isinstance(v, int) or (isinstance(v, str) and v.isdigit()) else str(v)


@dataclass(frozen=True)
class Format:
    """How one benchmark shape becomes an lm-eval multiple-choice task, in Python and in Jinja."""
    name: str
    shape: Shape

    # -- Jinja (the task YAML)
    @property
    def prompts(self) -> dict[str, str]:
        prefix = dict(self.shape.answer_prefix)
        out = {}
        for lang, text in self.shape.template:
            def slot(m: re.Match) -> str:
                path = getattr(self.shape, m.group(1))
                return "{{" + path + (".strip()" if m.group(1) in self.shape.strip else "") + "}}"
            body = SLOT_RE.sub(slot, text)
            out[lang] = body + ("\n" + prefix[lang] if prefix[lang] else "")
        return out

    def doc_to_choice(self, lang: str) -> str | list[str]:
        c = self.shape.choices
        if self.shape.fixed is not None:
            return self.shape.fixed[lang]
        return "{{" + c + "}}" if isinstance(c, str) else "{{[" + ", ".join(c) + "]}}"

    @property
    def doc_to_target(self) -> str:
        s = self.shape
        if s.labels:
            return "{{" + f"{s.labels}.index({s.answer})" + "}}"
        return "{{" + s.answer + "|int" + (f" - {s.answer_base}" if s.answer_base else "") + "}}"

    @property
    def required(self) -> list[str]:
        return list(dict.fromkeys(p.split(".")[0] for p in self.shape.fields()))

    # -- Python (what 08 and the checks use)
    def item_id(self, doc: Mapping) -> Hashable:
        i = self.shape.id
        return lookup(doc, i) if isinstance(i, str) else "#".join(_id_part(lookup(doc, p)) for p in i)

    def choices(self, doc: Mapping, lang: str | None = None) -> list[str]:
        s = self.shape
        if s.fixed is not None:
            if lang is None:
                raise ValueError(f"format {self.name!r} has fixed labels per language: pass lang")
            return s.fixed[lang]
        return list(lookup(doc, s.choices)) if isinstance(s.choices, str) else [lookup(doc, f) for f in s.choices]

    def gold(self, doc: Mapping) -> int:
        s = self.shape
        if s.labels:
            return list(lookup(doc, s.labels)).index(lookup(doc, s.answer))
        return int(lookup(doc, s.answer)) - s.answer_base

    def check(self, doc: Mapping, where: str, lang: str | None = None) -> None:
        _check_record(self, doc, where, lang)

    def cross(self, en: Mapping, ko: Mapping) -> str | None:
        s = self.shape
        if s.fixed is None and len(self.choices(en, "en")) != len(self.choices(ko, "ko")):
            return f"option counts differ: en {len(self.choices(en, 'en'))}, ko {len(self.choices(ko, 'ko'))}"
        if s.labels and lookup(en, s.labels) != lookup(ko, s.labels):
            return f"labels differ: en {lookup(en, s.labels)!r}, ko {lookup(ko, s.labels)!r}"
        if self.gold(en) != self.gold(ko):
            return f"{s.answer} differs: en {lookup(en, s.answer)!r}, ko {lookup(ko, s.answer)!r}"
        return None


def _text(doc: Mapping, path: str, where: str) -> None:
    v = lookup(doc, path)
    if not isinstance(v, str) or not v.strip():
        raise PairError(f"{where}: '{path}' must be a non-empty string, got {v!r}")


def _check_record(fmt: Format, doc: Mapping, where: str, lang: str | None) -> None:
    s = fmt.shape
    try:
        for p in s.fields():
            lookup(doc, p)
    except KeyError as e:
        raise PairError(f"{where}: a '{fmt.name}' record needs the field '{e.args[0]}' "
                        f"(its fields: {sorted(doc)})") from None
    for p in (s.id,) if isinstance(s.id, str) else s.id:
        v = lookup(doc, p)
        if isinstance(v, bool) or not isinstance(v, (str, int)) or (isinstance(v, str) and not v.strip()):
            raise PairError(f"{where}: '{p}' must be a string or an integer, got {v!r}")
    _text(doc, s.question, where)
    if s.context:
        _text(doc, s.context, where)
    if s.fixed is None:
        if isinstance(s.choices, str):
            opts = lookup(doc, s.choices)
            if not isinstance(opts, list):
                raise PairError(f"{where}: '{s.choices}' must be a list of options, got {opts!r}")
        else:
            opts = [lookup(doc, f) for f in s.choices]
        for i, t in enumerate(opts):
            if not isinstance(t, str) or not t.strip():
                raise PairError(f"{where}: option {i} is empty or not a string: {t!r}")
    n = len(fmt.choices(doc, lang or "en"))
    if s.labels:
        labels = lookup(doc, s.labels)
        if not isinstance(labels, list) or len(labels) != n or n < 2:
            raise PairError(f"{where}: {s.choices} has {n} options and {s.labels} "
                            f"{len(labels) if isinstance(labels, list) else repr(labels)}; "
                            "they must be equal and at least 2")
        if len(set(map(str, labels))) != len(labels):
            raise PairError(f"{where}: {s.labels} has duplicates: {labels!r}")
        if lookup(doc, s.answer) not in labels:
            raise PairError(f"{where}: {s.answer} {lookup(doc, s.answer)!r} is not among {s.labels} {labels!r}")
        return
    if n < 2:
        raise PairError(f"{where}: {n} option; a multiple-choice item needs at least 2")
    v = lookup(doc, s.answer)
    ok = not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()))
    if not ok or not s.answer_base <= int(v) < s.answer_base + n:
        raise PairError(f"{where}: '{s.answer}' must be an option number {s.answer_base}-"
                        f"{s.answer_base + n - 1} (the options counted from {s.answer_base}), got {v!r}")


PRESET_FORMATS: dict[str, Format] = {name: Format(name, check_shape(spec, f"preset {name}"))
                                     for name, spec in PRESETS.items()}


def format_of(value: Any, where: str = "format") -> Format:
    """A :class:`Format` from a preset name, a format mapping or a Format."""
    if isinstance(value, Format):
        return value
    if isinstance(value, str):
        if value not in PRESET_FORMATS:
            raise PairError(f"unknown format {value!r}; known formats: {', '.join(PRESET_FORMATS)} "
                            "(or a mapping of fields and templates: see data/README.md)")
        return PRESET_FORMATS[value]
    return Format(GENERIC, check_shape(value, where))

