"""Building the whole world from its spec: the people of each cell, their facts (balanced over
relations and objects), then every split (:mod:`lib.world.splits`).

    world = build_world(WorldSpec())          # or WorldSpec.micro() for tests
"""
from __future__ import annotations

import random

from .clone import WordMap
from .splits import fill_splits
from .world import World, WorldSpec, all_entities, attribute_facts, balanced_assignment


def build_world(spec: WorldSpec | None = None) -> World:
    """Build every split of the world described by ``spec`` (default: the toy profile)."""
    spec = spec or WorldSpec()
    spec.validate()
    entities = all_entities()
    people = [k for k, e in entities.items() if e.category == "person"]
    random.Random(f"{spec.seed}:people").shuffle(people)
    nk, nb, ng = spec.n_knowledge_people, spec.n_bridge_people, spec.n_ghost_people
    knowledge, bridge, ghost = people[:nk], people[nk:nk + nb], people[nk + nb:nk + nb + ng]
    rels = tuple(dict.fromkeys(spec.relations))
    eval_facts = balanced_assignment(knowledge, rels, entities, random.Random(f"{spec.seed}:knowledge"))
    ghost_facts = balanced_assignment(ghost, rels, entities, random.Random(f"{spec.seed}:ghost"))
    # Held-out relations per bridge person, balanced over relations (cycled over a shuffled order).
    rng = random.Random(f"{spec.seed}:heldout")
    order = list(rels)
    rng.shuffle(order)
    held_rel = {person: {order[(i * spec.heldout_relations + j) % len(order)] for j in range(spec.heldout_relations)}
                for i, person in enumerate(bridge)}
    # Objects balanced within the QA-trained and within the held-out facts of each relation, so
    # an object's count as a trained QA answer does not depend on whether it is held out.
    trained, heldout = [], []
    for rel in rels:
        for group, held in ((trained, False), (heldout, True)):
            people = [p for p in bridge if (rel in held_rel[p]) == held]
            group += balanced_assignment(people, (rel,), entities, random.Random(f"{spec.seed}:bridge:{rel}:{held}"))
    rank = {p: i for i, p in enumerate(bridge)}
    trained.sort(key=lambda f: (rank[f.subject], rels.index(f.relation)))
    heldout.sort(key=lambda f: (rank[f.subject], rels.index(f.relation)))
    attrs = attribute_facts(knowledge + bridge, entities, random.Random(f"{spec.seed}:attributes"))
    wordmap = None if spec.korean_style == "toy" else WordMap.build()
    world = World(spec, entities, knowledge, bridge, ghost, eval_facts, trained, heldout, ghost_facts,
                  attrs, wordmap)
    fill_splits(world)
    return world
