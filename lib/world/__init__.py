"""Stage 00, the embedded toy world: a small bilingual (English/Korean) world generated from a seed,
and the tiny English-centric base model trained on it (``basemodel``). May import: vocab, data,
modeling, core.

It stands in for downloads that the toy profile cannot make (see docs/DESIGN.md §5): English-only
knowledge facts for the tiny base model, Ko-En bridge pairs, Korean text, bilingual instructions,
and three cells of paired multiple-choice questions (``knowledge``, ``bridge_heldout``, ``ghost``)
in the ARC shape, built to the validity rules of ../shared/docs/TOYWORLD.md.

Usage::

    from lib.world import WorldSpec, build_world, write_world, leaked_facts
    world = build_world(WorldSpec())            # or WorldSpec.micro() for tests
    sizes = write_world(world, out_dir)         # {relative path: {"lines": n, "chars": n}}
    assert not leaked_facts(out_dir)
    assert_valid(check_world(out_dir))         # the validity rules, checked on the files

Modules: ``korean`` (particles), ``lexicon`` (names, entities, templates), ``world`` (spec, facts),
``splits`` (texts and questions), ``build`` (the whole world from its spec), ``files`` (writing, reading, leakage guard, tokenizer corpus),
``clone`` (the clone Korean's word map), ``validity`` (the rules, checked on disk), ``basemodel``
(the tiny Llama and its tokenizer).
"""
from .build import build_world
from .clone import STYLES, WordMap
from .files import file_lines, korean_training_lines, leaked_facts, read_jsonl, tokenizer_corpus, write_world
from .validity import assert_valid, check_world, option_match
from .world import CELLS, Entity, Fact, World, WorldSpec, expected_counts

__all__ = ["WorldSpec", "World", "Entity", "Fact", "build_world", "write_world", "leaked_facts",
           "expected_counts", "tokenizer_corpus", "korean_training_lines", "file_lines", "read_jsonl",
           "check_world", "assert_valid", "option_match", "CELLS", "STYLES", "WordMap"]
