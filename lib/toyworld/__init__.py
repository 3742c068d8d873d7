"""The embedded toy world: a small bilingual (English/Korean) world generated from a seed.

It stands in for downloads that the toy profile cannot make (see docs/DESIGN.md §5): English-only
knowledge facts for the tiny base model, Ko-En bridge pairs, Korean text, bilingual instructions,
and paired multiple-choice questions (the toy ``arc_challenge`` / ``ko_arc_challenge``).

Usage::

    from lib.toyworld import WorldSpec, build_world, write_world, leaked_facts
    world = build_world(WorldSpec())            # or WorldSpec.micro() for tests
    sizes = write_world(world, out_dir)         # {relative path: {"lines": n, "chars": n}}
    assert not leaked_facts(out_dir)

Modules: ``korean`` (particles), ``lexicon`` (names, entities, templates), ``world`` (spec, facts),
``splits`` (texts and questions), ``files`` (writing, reading, leakage guard, tokenizer corpus).
"""
from .files import (korean_training_lines, leaked_facts, read_jsonl, read_lines, tokenizer_corpus,
                    write_world)
from .world import Entity, Fact, World, WorldSpec, build_world, expected_counts

__all__ = ["WorldSpec", "World", "Entity", "Fact", "build_world", "write_world", "leaked_facts",
           "expected_counts", "tokenizer_corpus", "korean_training_lines", "read_lines", "read_jsonl"]
