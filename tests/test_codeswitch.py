"""Code-switching (05's code_switch_ratio): exact on hand-made lines, the share it promises on the
toy world's clone text, and stage 05 packing the switched text."""
from __future__ import annotations

import json
import re

import pytest

from lib.data.codeswitch import code_switch, read_word_pairs
from lib.world import WorldSpec, build_world, write_world

HANGUL, LATIN = re.compile("[가-힣]"), re.compile("[A-Za-z]")


@pytest.fixture()
def pairs(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"en": e, "ko": k}, ensure_ascii=False)
                           for e, k in [("Minsu", "민수"), ("Busan", "부산"), ("lives", "산다")]) + "\n", encoding="utf-8")
    return read_word_pairs(f)


def test_ratio_zero_and_one_are_exact(pairs):
    lines = ["Minsu lives in Busan.", "민수 산다 부산?", "nothing here"]
    assert code_switch(lines, pairs, 0.0)[0] == lines
    out, stats = code_switch(lines, pairs, 1.0)
    assert out == ["민수 산다 in 부산.", "Minsu lives Busan?", "nothing here"]     # punctuation kept
    assert stats == {"lines": 3, "known_words": 6, "switched": 6, "share": 1.0, "lines_switched": 2}
    with pytest.raises(ValueError, match=r"code_switch_ratio must be in \[0, 1\]"):
        code_switch(lines, pairs, 1.5)


def test_bad_pair_files_name_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"en": "a", "ko": "가"}\n{"en": "two words", "ko": "나"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.jsonl:2: a word pair needs one word"):
        read_word_pairs(f)
    f.write_text('{"en": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.jsonl:1: expected"):
        read_word_pairs(f)
    with pytest.raises(FileNotFoundError, match="no word-pair file"):
        read_word_pairs(tmp_path / "none.jsonl")


def test_share_on_the_clone_world_and_both_scripts_appear(tmp_path):
    write_world(build_world(WorldSpec.micro()), tmp_path)
    pairs = read_word_pairs(tmp_path / "data/word_map.jsonl")
    ko = (tmp_path / "data/stage3_ko.txt").read_text(encoding="utf-8").splitlines()
    out, stats = code_switch(ko, pairs, 0.1, seed=3)
    assert stats["known_words"] > 2000 and 0.08 < stats["share"] < 0.12
    mixed = [ln for ln in out if HANGUL.search(ln) and LATIN.search(ln)]
    # a switched line holds both scripts, unless every word of it switched
    assert stats["lines_switched"] - 3 <= len(mixed) <= stats["lines_switched"] and len(mixed) > 0.3 * len(out)
    assert code_switch(ko, pairs, 0.1, seed=3)[0] == out                  # deterministic
    assert code_switch(ko[::-1], pairs, 0.1, seed=3)[0] != out[::-1]      # seeded per line position
