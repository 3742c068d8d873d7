"""Build the bilingual toy world: people, facts, every training split and the paired MC questions.

Everything follows from :class:`WorldSpec` (sizes + seed) and the lexicons in
:mod:`lib.world.lexicon`; the same spec gives the same world, line for line. Each split draws
from its own random stream (``Random(f"{seed}:{name}")``), so growing one split leaves the
others unchanged.

Who is who (see ../shared/docs/TOYWORLD.md for the validity rules this follows):
- *knowledge people*: their facts (``eval_facts``) are stated only in English, in several
  paraphrases, and never asked anywhere in training; the ``knowledge`` cell asks them in both
  languages (Korean: the transfer cell);
- *bridge people*: their facts are stated in both languages (Ko-En pairs, Korean text, English
  text), and question answering is learned on them in both languages, except for
  ``heldout_relations`` relations per person whose questions are never trained: the
  ``bridge_heldout`` cell (the in-language ceiling);
- *ghost people*: no facts at all (their names appear only in events such as "Minsu met
  Jiho."); the ``ghost`` cell asks about them and must read chance;
- every knowledge and bridge person's non-evaluated attributes (colour, age) are stated in both
  languages, so the language never predicts which facts exist.

The Korean side is written in one of three ``korean_style`` s (:mod:`lib.world.clone`).

Usage::

    from lib.world import WorldSpec, build_world, write_world
    world = build_world(WorldSpec.micro())
    sizes = write_world(world, "outputs/demo/00_toy_world")
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields

from lib.core.params import dataclass_values
from lib.core.prompts import QA_PROMPTS

from . import lexicon as lx
from .clone import WordMap, check_style
from .korean import fill

N_CHOICES = 4
LABELS = ("A", "B", "C", "D")
CELLS = ("knowledge", "bridge_heldout", "ghost")


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and seed of a toy world. The defaults are the ``toy`` profile (250 questions).

    Exact line and record counts that follow from a spec: :func:`expected_counts`.
    """
    seed: int = 1234
    korean_style: str = "clone"      # clone | clone_sov | toy (lib.world.clone)
    n_knowledge_people: int = 50     # people whose facts are stated in English only and evaluated
    n_bridge_people: int = 50        # people whose facts are stated in both languages (QA trained)
    n_ghost_people: int = 20         # people with no facts (the ghost cell: chance, measured)
    relations: tuple[str, ...] = lx.EVAL_RELATIONS   # evaluated relations
    heldout_relations: int = 2       # relations per bridge person whose QA is held out (bridge_heldout cell)
    en_paraphrases: int = 5          # English statements per fact (<= 5 templates)
    ko_paraphrases: int = 5          # Korean statements per bridge fact in the Korean text (<= 5)
    qa_repeats: int = 2              # Question/Answer items per QA-trained bridge fact and language
    bridge_paraphrases: int = 3      # Ko-En pairs per bridge fact (<= 5)
    n_mention_pairs: int = 600       # Ko-En pairs about attributes, events, categories
    n_heldout_pairs: int = 200       # held-out Ko-En pairs (alignment measurement), in no training file
    n_ko_mono: int = 4000            # Korean monolingual lines (stage 2)
    n_stage3_ko: int = 4000          # Korean lines for stage 3
    n_stage3_en: int = 4000          # English lines for stage 3
    n_instructions: int = 300        # instruction records per language
    n_sample: int = 300              # parallel sample lines for tokenizer statistics

    @classmethod
    def micro(cls, **overrides) -> "WorldSpec":
        """A small world for tests and the micro profile (60 + 24 + 30 questions, well under 1 s)."""
        base = dict(n_knowledge_people=12, n_bridge_people=12, n_ghost_people=6, bridge_paraphrases=2,
                    n_mention_pairs=100, n_heldout_pairs=40, n_ko_mono=400, n_stage3_ko=400,
                    n_stage3_en=400, n_instructions=60, n_sample=50)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, values: dict) -> "WorldSpec":
        """A spec from a params section; unknown keys fail naming the key."""
        values = dataclass_values(cls, values)
        if "relations" in values:
            values["relations"] = tuple(values["relations"])
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the field when the spec cannot be built."""
        check_style(self.korean_style)
        n_people = self.n_knowledge_people + self.n_bridge_people + self.n_ghost_people
        if n_people > len(lx.PEOPLE):
            raise ValueError(f"n_knowledge_people + n_bridge_people + n_ghost_people = {n_people} > "
                             f"{len(lx.PEOPLE)} names in lib/world/lexicon.py PEOPLE; add names or lower the sizes")
        bad = [r for r in self.relations if r not in lx.RELATION_CATEGORY]
        if bad:
            raise ValueError(f"relations: unknown {bad}; known: {list(lx.RELATION_CATEGORY)}")
        if len(set(self.relations)) < 2:
            raise ValueError("relations: need at least 2 distinct relations")
        if not 1 <= self.heldout_relations < len(set(self.relations)):
            raise ValueError(f"heldout_relations must be in 1..{len(set(self.relations)) - 1} "
                             "(each bridge person keeps at least one QA-trained relation)")
        if self.n_knowledge_people < 1 or self.n_bridge_people < 2:
            raise ValueError("need n_knowledge_people >= 1 and n_bridge_people >= 2")
        for name in ("en_paraphrases", "ko_paraphrases", "bridge_paraphrases"):
            if not 1 <= getattr(self, name) <= 5:
                raise ValueError(f"{name} must be in 1..5 (there are 5 templates per relation)")
        if self.qa_repeats < 1:
            raise ValueError("qa_repeats must be >= 1 (QA is learned on bridge people)")
        for f in fields(self):
            if f.name.startswith("n_") and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0")


@dataclass(frozen=True)
class Entity:
    key: str       # unique id, e.g. "minsu", "busan", "police_officer"
    category: str  # "person", "city", "job", "food", "animal", "sport", "colour"
    en: str
    ko: str


@dataclass(frozen=True)
class Fact:
    subject: str   # person key
    relation: str  # an evaluable relation, or an attribute ("likes_colour", "age")
    object: str    # entity key (or a number as text for "age")


@dataclass
class World:
    """A built world. ``texts``: relative path -> lines; ``records``: relative path -> JSONL rows."""
    spec: WorldSpec
    entities: dict[str, Entity]
    knowledge_people: list[str]
    bridge_people: list[str]
    ghost_people: list[str]
    eval_facts: list[Fact]         # knowledge facts: stated in English only, asked in both (knowledge cell)
    bridge_facts: list[Fact]       # QA-trained bridge facts (stated and asked in both languages)
    heldout_facts: list[Fact]      # bridge facts stated in both languages, never asked (bridge_heldout cell)
    ghost_facts: list[Fact]        # answers of the ghost questions: stated nowhere (ghost cell)
    attributes: list[Fact]         # never-evaluated attributes of knowledge and bridge people
    wordmap: WordMap | None = None  # the clone styles' word map (None for "toy")
    texts: dict[str, list[str]] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def style(self) -> str:
        return self.spec.korean_style

    def surface(self, key: str, lang: str) -> str:
        """The English or Korean form of an entity key (numbers stand for themselves)."""
        ent = self.entities.get(key)
        return key if ent is None else getattr(ent, lang)

    def korean(self, en: str, ko_toy: str) -> str:
        """The Korean of an aligned pair: the clone of ``en``, or the toy template's ``ko_toy``."""
        if self.wordmap is None:
            return ko_toy
        return self.wordmap.translate(en, sov=self.style == "clone_sov")

    def cell_facts(self, cell: str) -> list[Fact]:
        return {"knowledge": self.eval_facts, "bridge_heldout": self.heldout_facts,
                "ghost": self.ghost_facts}[cell]


def slug(text: str) -> str:
    return text.lower().replace(" ", "_").replace("-", "_")


def all_entities() -> dict[str, Entity]:
    """Every lexicon entity by key; keys are unique across categories (checked)."""
    out: dict[str, Entity] = {}
    groups = [("person", lx.PEOPLE)] + list(lx.CATEGORIES.items())
    for category, items in groups:
        for en, ko in items:
            key = slug(en)
            if key in out:
                raise ValueError(f"lexicon: duplicate entity key {key!r} ({category}, {out[key].category})")
            out[key] = Entity(key, category, en, ko)
    return out


def render(world: World, pair: tuple[str, str], s: str, o: str | None = None,
           p: str | None = None, d: tuple[str, str] | None = None) -> tuple[str, str]:
    """Fill an aligned (English, Korean) template with entity keys; returns (en, ko)."""
    en_vals = {"s": world.surface(s, "en")}
    ko_vals = {"s": world.surface(s, "ko")}
    if o is not None:
        oe = world.surface(o, "en")
        a_o = lx.with_article(oe)
        en_vals.update(o=oe, a_o=a_o, A_o=lx.capitalised(a_o), O=lx.capitalised(oe))
        ko_vals["o"] = world.surface(o, "ko")
    if p is not None:
        en_vals["p"], ko_vals["p"] = world.surface(p, "en"), world.surface(p, "ko")
    if d is not None:
        en_vals["d"], ko_vals["d"] = d
    en = lx.capitalised(pair[0].format(**en_vals))
    return en, world.korean(en, fill(pair[1], **ko_vals))


def question_text(world: World, fact: Fact, lang: str) -> str:
    en_t, ko_t = lx.QUESTION_TEMPLATES[fact.relation]
    en, ko = render(world, (en_t, ko_t), fact.subject)
    return en if lang == "en" else ko


def qa_text(world: World, fact: Fact, lang: str) -> str:
    """A Question/Answer item in the evaluation's prompt format, answer included (two lines)."""
    prompt = QA_PROMPTS[lang].format(q=question_text(world, fact, lang))
    return f"{prompt} {world.surface(fact.object, lang)}"


def balanced_assignment(people: list[str], relations, entities, rng: random.Random) -> list[Fact]:
    """One object per (person, relation), each category's objects used equally often (+-1)."""
    facts = []
    for rel in relations:
        cat = lx.RELATION_CATEGORY[rel]
        objs = [k for k, e in entities.items() if e.category == cat]
        pool: list[str] = []
        while len(pool) < len(people):
            rng.shuffle(objs)
            pool.extend(objs)
        pool = pool[:len(people)]
        rng.shuffle(pool)
        facts += [Fact(person, rel, obj) for person, obj in zip(people, pool)]
    # person-major order: all relations of the first person, then the next person
    order = {p: i for i, p in enumerate(people)}
    rel_order = {r: i for i, r in enumerate(relations)}
    return sorted(facts, key=lambda f: (order[f.subject], rel_order[f.relation]))


def attribute_facts(people: list[str], entities, rng: random.Random) -> list[Fact]:
    colours = [k for k, e in entities.items() if e.category == "colour"]
    out = []
    for person in people:
        out.append(Fact(person, "likes_colour", rng.choice(colours)))
        out.append(Fact(person, "age", str(rng.choice(lx.AGES))))
    return out


def fact_pairs(world: World, fact: Fact, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """``k`` aligned statements of one fact, each from a different template."""
    templates = lx.FACT_TEMPLATES.get(fact.relation) or lx.ATTRIBUTE_TEMPLATES[fact.relation]
    chosen = rng.sample(range(len(templates)), min(k, len(templates)))
    return [render(world, templates[i], fact.subject, fact.object) for i in chosen]


def event_pair(world: World, rng: random.Random) -> tuple[str, str]:
    """A sentence pair about two people doing something together (no evaluable fact)."""
    people = world.knowledge_people + world.bridge_people + world.ghost_people
    s, p = rng.sample(people, 2)
    return render(world, rng.choice(lx.PAIR_TEMPLATES), s, p=p, d=rng.choice(lx.DAYS))


def attribute_pair(world: World, rng: random.Random) -> tuple[str, str]:
    return fact_pairs(world, rng.choice(world.attributes), 1, rng)[0]


def category_pair(world: World, rng: random.Random) -> tuple[str, str]:
    cat = rng.choice(sorted(lx.CATEGORY_TEMPLATES))
    ent = rng.choice([k for k, e in world.entities.items() if e.category == cat])
    return render(world, rng.choice(lx.CATEGORY_TEMPLATES[cat]), "", o=ent)


def all_category_pairs(world: World) -> list[tuple[str, str]]:
    return [render(world, t, "", o=key)
            for cat, temps in sorted(lx.CATEGORY_TEMPLATES.items())
            for key, e in world.entities.items() if e.category == cat
            for t in temps]


def mention_pair(world: World, rng: random.Random) -> tuple[str, str]:
    """Any pair that names people or entities without an evaluable fact of a knowledge person."""
    x = rng.random()
    if x < 0.55:
        return event_pair(world, rng)
    if x < 0.85:
        return attribute_pair(world, rng)
    return category_pair(world, rng)


def unique_pairs(make, n: int, rng: random.Random, exclude: set[str], what: str) -> list[tuple[str, str]]:
    """``n`` distinct pairs from ``make(rng)``, none with a side in ``exclude`` (updated)."""
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ValueError(f"cannot draw {n} distinct {what}; lower the size or add templates")
        en, ko = make(rng)
        if en in exclude or ko in exclude:
            continue
        exclude.update((en, ko))
        out.append((en, ko))
    return out


def expected_counts(spec: WorldSpec) -> dict[str, int]:
    """Line/record counts that the spec fixes exactly (used by tests and notebook checks)."""
    n_rel = len(set(spec.relations))
    n_eval = spec.n_knowledge_people * n_rel
    n_held = spec.n_bridge_people * spec.heldout_relations
    n_qa = spec.n_bridge_people * n_rel - n_held
    n_bridge_stated = spec.n_bridge_people * n_rel
    n_attr = (spec.n_knowledge_people + spec.n_bridge_people) * sum(len(t) for t in lx.ATTRIBUTE_TEMPLATES.values())
    n_events = max(50, spec.n_mention_pairs // 2)
    en_core = ((n_eval + n_bridge_stated) * spec.en_paraphrases + 2 * spec.qa_repeats * n_qa + n_attr
               + n_category_sentences() + n_events)
    return {
        "eval/knowledge_en.jsonl": n_eval, "eval/knowledge_ko.jsonl": n_eval,
        "eval/bridge_heldout_en.jsonl": n_held, "eval/bridge_heldout_ko.jsonl": n_held,
        "eval/ghost_en.jsonl": spec.n_ghost_people * n_rel, "eval/ghost_ko.jsonl": spec.n_ghost_people * n_rel,
        "eval/facts.jsonl": n_eval + n_held + spec.n_ghost_people * n_rel,
        "data/bridge_train.en": n_bridge_stated * spec.bridge_paraphrases + spec.n_mention_pairs,
        "data/bridge_train.ko": n_bridge_stated * spec.bridge_paraphrases + spec.n_mention_pairs,
        "data/heldout_pairs.en": spec.n_heldout_pairs,
        "data/heldout_pairs.ko": spec.n_heldout_pairs,
        "data/ko_mono.txt": spec.n_ko_mono,
        "data/stage3_ko.txt": spec.n_stage3_ko,
        "data/stage3_en.txt": spec.n_stage3_en,
        "data/instructions.jsonl": 2 * spec.n_instructions,
        "data/instructions_parallel.jsonl": 2 * n_qa,
        "data/en_pretrain.txt": en_core + spec.n_mention_pairs,
    }


def n_category_sentences() -> int:
    """Number of category sentences (one per entity and template); the spec does not change it."""
    return sum(len(temps) * len(lx.CATEGORIES[cat]) for cat, temps in lx.CATEGORY_TEMPLATES.items())


def spec_dict(spec: WorldSpec) -> dict:
    d = asdict(spec)
    d["relations"] = list(spec.relations)
    return d
