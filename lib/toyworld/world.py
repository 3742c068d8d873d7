"""Build the bilingual toy world: people, facts, every training split and the paired MC questions.

Everything follows from :class:`WorldSpec` (sizes + seed) and the lexicons in
:mod:`lib.toyworld.lexicon`; the same spec gives the same world, line for line. Each split draws
from its own random stream (``Random(f"{seed}:{name}")``), so growing one split leaves the
others unchanged.

Who is who:
- *knowledge people*: their facts (``eval_facts``) are stated only in English and asked about in
  both languages; their names still appear in Korean, but only with attributes that are never
  asked (favourite colour, age) or next to other people ("민수는 지호와 만났다.");
- *bridge people*: their facts are stated in both languages (Ko-En pairs, Korean text,
  instructions), except one held-out fact per person that appears only in the held-out pairs.

Usage::

    from lib.toyworld import WorldSpec, build_world, write_world
    world = build_world(WorldSpec.micro())
    sizes = write_world(world, "outputs/demo/00_toy_world")
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields

from . import lexicon as lx
from .korean import fill

N_CHOICES = 4
LABELS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and seed of a toy world. The defaults are the ``toy`` profile (250 questions).

    Exact line counts that follow from a spec (see :func:`expected_counts`):
    questions = knowledge people x relations; bridge_train = bridge people x (relations - 1)
    x bridge_paraphrases + n_mention_pairs; the sampled splits have exactly their ``n_*`` lines.
    """
    seed: int = 1234
    n_knowledge_people: int = 50     # people whose facts are evaluated (stated in English only)
    n_bridge_people: int = 40        # people whose facts are stated in both languages
    relations: tuple[str, ...] = lx.EVAL_RELATIONS   # evaluated relations (>= 2: one is held out per bridge person)
    en_paraphrases: int = 5          # distinct English statements per fact in en_pretrain (<= 5)
    qa_repeats: int = 2              # "Question:/Answer:" items per fact in en_pretrain (English only)
    bridge_paraphrases: int = 3      # Ko-En pairs per trained bridge fact (<= 5)
    n_mention_pairs: int = 600       # Ko-En pairs that mention people/entities, no evaluable fact
    n_heldout_pairs: int = 200       # held-out Ko-En pairs (alignment measurement)
    n_ko_mono: int = 4000            # Korean monolingual lines (stage 2)
    n_stage3_ko: int = 4000          # Korean lines for stage 3
    n_stage3_en: int = 4000          # English lines for stage 3
    n_instructions: int = 300        # instruction records per language
    n_sample: int = 300              # parallel sample lines for tokenizer statistics

    @classmethod
    def micro(cls, **overrides) -> "WorldSpec":
        """A small world for tests and the micro profile (60 questions, builds in well under 1 s)."""
        base = dict(n_knowledge_people=12, n_bridge_people=10, bridge_paraphrases=2,
                    n_mention_pairs=100, n_heldout_pairs=40, n_ko_mono=400, n_stage3_ko=400,
                    n_stage3_en=400, n_instructions=60, n_sample=50)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, values: dict) -> "WorldSpec":
        """A spec from a params section; unknown keys fail naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown WorldSpec key(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "relations" in values:
            values["relations"] = tuple(values["relations"])
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the field when the spec cannot be built."""
        if self.n_knowledge_people + self.n_bridge_people > len(lx.PEOPLE):
            raise ValueError(f"n_knowledge_people + n_bridge_people = "
                             f"{self.n_knowledge_people + self.n_bridge_people} > {len(lx.PEOPLE)} "
                             "names in lib/toyworld/lexicon.py PEOPLE; add names or lower the sizes")
        bad = [r for r in self.relations if r not in lx.RELATION_CATEGORY]
        if bad:
            raise ValueError(f"relations: unknown {bad}; known: {list(lx.RELATION_CATEGORY)}")
        if len(set(self.relations)) < 2:
            raise ValueError("relations: need at least 2 distinct relations (one per bridge person is held out)")
        if self.n_knowledge_people < 1 or self.n_bridge_people < 2:
            raise ValueError("need n_knowledge_people >= 1 and n_bridge_people >= 2")
        for name in ("en_paraphrases", "bridge_paraphrases"):
            if not 1 <= getattr(self, name) <= 5:
                raise ValueError(f"{name} must be in 1..5 (there are 5 templates per relation)")
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
    eval_facts: list[Fact]
    bridge_facts: list[Fact]       # trained bridge facts (both languages)
    heldout_facts: list[Fact]      # bridge facts seen only in bridge_heldout
    attributes: list[Fact]         # never-evaluated attributes of everybody
    texts: dict[str, list[str]] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)

    def surface(self, key: str, lang: str) -> str:
        """The English or Korean form of an entity key (numbers stand for themselves)."""
        ent = self.entities.get(key)
        return key if ent is None else getattr(ent, lang)


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
    return lx.capitalised(pair[0].format(**en_vals)), fill(pair[1], **ko_vals)


def question_text(world: World, fact: Fact, lang: str) -> str:
    en_t, ko_t = lx.QUESTION_TEMPLATES[fact.relation]
    en, ko = render(world, (en_t, ko_t), fact.subject)
    return en if lang == "en" else ko


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
    people = world.knowledge_people + world.bridge_people
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


def qa_lines(world: World, fact: Fact) -> list[str]:
    """The English Question/Answer item of a fact (two lines, the MC prompt plus the answer)."""
    return [f"Question: {question_text(world, fact, 'en')}", f"Answer: {world.surface(fact.object, 'en')}"]


def build_world(spec: WorldSpec | None = None) -> World:
    """Build every split of the world described by ``spec`` (default: the toy profile)."""
    from .splits import fill_splits  # split generation lives next door to keep modules short

    spec = spec or WorldSpec()
    spec.validate()
    entities = all_entities()
    people = [k for k, e in entities.items() if e.category == "person"]
    random.Random(f"{spec.seed}:people").shuffle(people)
    knowledge = people[:spec.n_knowledge_people]
    bridge = people[spec.n_knowledge_people:spec.n_knowledge_people + spec.n_bridge_people]
    rels = tuple(spec.relations)
    eval_facts = balanced_assignment(knowledge, rels, entities, random.Random(f"{spec.seed}:knowledge"))
    bridge_all = balanced_assignment(bridge, rels, entities, random.Random(f"{spec.seed}:bridge"))
    rng = random.Random(f"{spec.seed}:heldout")
    held_rel = {person: rng.choice(rels) for person in bridge}
    heldout = [f for f in bridge_all if held_rel[f.subject] == f.relation]
    trained = [f for f in bridge_all if held_rel[f.subject] != f.relation]
    attrs = attribute_facts(knowledge + bridge, entities, random.Random(f"{spec.seed}:attributes"))
    world = World(spec, entities, knowledge, bridge, eval_facts, trained, heldout, attrs)
    fill_splits(world)
    return world


def expected_counts(spec: WorldSpec) -> dict[str, int]:
    """Line/record counts that the spec fixes exactly (used by tests and notebook checks)."""
    n_rel = len(spec.relations)
    n_eval = spec.n_knowledge_people * n_rel
    n_bridge_facts = spec.n_bridge_people * (n_rel - 1)
    qa_items = spec.qa_repeats * (n_eval + n_bridge_facts)
    statements = spec.en_paraphrases * (n_eval + n_bridge_facts)
    return {
        "eval/arc_en.jsonl": n_eval,
        "eval/arc_ko.jsonl": n_eval,
        "eval/facts.jsonl": n_eval,
        "data/bridge_train.en": n_bridge_facts * spec.bridge_paraphrases + spec.n_mention_pairs,
        "data/bridge_train.ko": n_bridge_facts * spec.bridge_paraphrases + spec.n_mention_pairs,
        "data/bridge_heldout.en": spec.n_heldout_pairs,
        "data/bridge_heldout.ko": spec.n_heldout_pairs,
        "data/ko_mono.txt": spec.n_ko_mono,
        "data/stage3_ko.txt": spec.n_stage3_ko,
        "data/stage3_en.txt": spec.n_stage3_en,
        "data/instructions.jsonl": 2 * spec.n_instructions,
        "data/sample.en": spec.n_sample,
        "data/sample.ko": spec.n_sample,
        "data/en_pretrain.txt": statements + 2 * qa_items + spec.n_mention_pairs + n_category_sentences(),
    }


def n_category_sentences() -> int:
    """Number of category sentences (one per entity and template); the spec does not change it."""
    return sum(len(temps) * len(lx.CATEGORIES[cat]) for cat, temps in lx.CATEGORY_TEMPLATES.items())


def spec_dict(spec: WorldSpec) -> dict:
    d = asdict(spec)
    d["relations"] = list(spec.relations)
    return d
