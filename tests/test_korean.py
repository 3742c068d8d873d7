"""Korean particles by final consonant (lib/world/korean.py)."""
from __future__ import annotations

import pytest

from lib.world.korean import fill, final_index, has_batchim, josa, particle


@pytest.mark.parametrize("word, pair, expected", [
    ("민수", "은/는", "민수는"),      # vowel-final name
    ("지훈", "은/는", "지훈은"),      # ㄴ-final name
    ("사과", "을/를", "사과를"),
    ("빵", "을/를", "빵을"),
    ("서울", "으로/로", "서울로"),     # ㄹ-final takes 로
    ("부산", "으로/로", "부산으로"),
    ("대구", "으로/로", "대구로"),
    ("고양이", "과/와", "고양이와"),
    ("책", "과/와", "책과"),
    ("지호", "이/가", "지호가"),
    ("서연", "이/가", "서연이"),
    ("의사", "이다/다", "의사다"),
    ("경찰관", "이다/다", "경찰관이다"),
    ("교사", "이에요/예요", "교사예요"),
    ("한별", "은/는", "한별은"),      # ㄹ is a batchim for every pair except (으)로
    ("한별", "으로/로", "한별로"),
])
def test_josa_by_final_consonant(word, pair, expected):
    assert josa(word, pair) == expected


def test_pair_order_does_not_matter():
    assert particle("민수", "는/은") == particle("민수", "은/는") == "는"
    assert particle("책", "와/과") == "과"


def test_final_index_from_syllable_arithmetic():
    # 각 = ㄱ+ㅏ+ㄱ (final 1), 가 (0), 갈 (8 = ㄹ), 힣 is the last syllable (final ㅎ = 27)
    assert [final_index(c) for c in "각가갈힣"] == [1, 0, 8, 27]


@pytest.mark.parametrize("word, pair, expected", [
    ("3", "은/는", "3은"),        # 삼: ㅁ
    ("2", "은/는", "2는"),        # 이: vowel
    ("1", "으로/로", "1로"),      # 일: ㄹ
    ("6", "으로/로", "6으로"),    # 육: ㄱ
    ("Seoul", "으로/로", "Seoul로"),
    ("Kim", "이/가", "Kim이"),
    ("Lee", "이/가", "Lee가"),
    ("부산)", "으로/로", "부산)으로"),   # trailing punctuation is skipped
    ("...", "은/는", "...는"),           # nothing to read: vowel-final
])
def test_non_hangul_endings_follow_the_documented_heuristic(word, pair, expected):
    assert josa(word, pair) == expected


def test_has_batchim():
    assert has_batchim("빵") and has_batchim("서울") and not has_batchim("사과")


def test_fill_agrees_each_slot():
    assert fill("{s|은/는} {o|을/를} 좋아한다.", s="지훈", o="사과") == "지훈은 사과를 좋아한다."
    assert fill("{s|과/와} {p|은/는} 친구다.", s="민수", p="서연") == "민수와 서연은 친구다."


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown particle"):
        particle("민수", "에게/한테")
    with pytest.raises(KeyError, match="slot 'o'"):
        fill("{s|은/는} {o|을/를}", s="민수")
