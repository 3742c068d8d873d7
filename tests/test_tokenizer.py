"""The vocabulary merge keeps every base id, adds exactly the new pieces, and the saved transformers
tokenizer encodes exactly as the merged SentencePiece model.

Small tokenizers are trained here in ~1 s; the real Llama-2 / KoBERT checks read ../shared/data
and skip when it is absent. Token counts exclude BOS throughout.
"""
from __future__ import annotations

import itertools
import time

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, LlamaTokenizerFast

import lib.vocab.merge as T
from lib.core import paths
from lib.core.readers import read_lines
from lib.vocab.sptrain import train_sentencepiece

# English-ish text for the base model. "TV" is rare here but frequent in the Korean text: in "all"
# mode the Korean piece "▁TV" is appended and changes how the two English TV lines split (the toy
# version of KoBERT's "▁10" drifting English news); in "hangul" mode it is not appended.
EN = [f"On day {d} the {a} {v} {n} {o} near the {p}."
      for d, (a, v, n, o, p) in enumerate(itertools.product(
          ("old farmer", "young teacher", "small child", "tall doctor"),
          ("sells", "watches", "paints", "counts"), ("two", "seven", "many"),
          ("apples", "rivers", "houses", "letters"), ("school", "market", "station")))]
EN_TV = ["The TV at the station is old.", "A child watches TV at school."]   # rare in English
EN = EN + EN_TV
# Korean for the Korean unigram model: hand-written sentences plus templated ones (unigram needs
# repetition to keep multi-syllable pieces), and "TV" lines for a non-Hangul Korean piece.
KO_HAND = """민수는 부산에 산다.
지영이는 서울에서 학교에 다닌다.
공룡이 햄버거를 먹는다.
할머니께서 시장에서 사과를 사셨다.
선생님은 도서관에서 책을 읽으신다.
아이들이 공원에서 공을 차며 논다.
오늘은 날씨가 맑고 바람이 시원하다.
내일은 비가 많이 온다고 한다.
우리는 주말마다 산에 올라간다.
동생이 그린 그림이 정말 예쁘다.
의사가 환자에게 약을 건네주었다.
농부는 가을에 쌀을 거둔다.
친구와 함께 영화를 보러 갔다.
저녁에는 가족과 김치찌개를 먹었다.
기차가 역에 도착하자 사람들이 내렸다.
고양이가 창가에서 햇볕을 쬐고 있다.
새로운 학기가 시작되어 학생들이 바쁘다.
할아버지는 매일 아침 신문을 읽으신다.
바다에서 수영을 하면 기분이 좋아진다.
그는 편지를 써서 우체국에 보냈다.
햄버거 가게 앞에 줄이 길게 서 있었다.
공룡 박물관에는 커다란 뼈가 전시되어 있다.
겨울이 오면 눈사람을 만들고 싶다.
민수는 지영이에게 꽃을 선물했다.
서울의 밤거리는 불빛으로 가득하다.""".splitlines()


def _josa(word: str, after_consonant: str, after_vowel: str) -> str:
    """Korean particles depend on whether the last syllable ends in a consonant (batchim)."""
    return word + (after_consonant if (ord(word[-1]) - 0xAC00) % 28 else after_vowel)


KO_WHO = ("민수", "지영", "철수", "영희", "할머니", "선생님", "공룡", "아이", "의사", "농부", "친구", "동생")
KO_WHAT = ("햄버거", "사과", "책", "편지", "김치", "신문", "우유", "빵", "노래", "그림", "숙제", "영화")
KO_DID = ("먹었다", "읽었다", "좋아한다", "찾았다", "만들었다", "보았다", "샀다", "그렸다")
KO_WHERE = ("부산", "서울", "학교", "시장", "도서관", "병원", "공원", "집")
KO_TEMPLATED = [f"{_josa(n, '은', '는')} {p}에서 {_josa(o, '을', '를')} {v}."
                for n, o, v, p in itertools.product(KO_WHO, KO_WHAT, KO_DID, KO_WHERE)]
KO = KO_HAND * 3 + KO_TEMPLATED[::92] + ["저녁에는 TV를 보았다.", "TV 뉴스를 켰다."] * 20
TRICKY = ["햄버거를 먹는 공룡", "a  b   c    d", "민수는  부산에서   산다", "TV를 보는 tall doctor",
          "숫자 1234와 5678", "못 본 글자: 햏햏 😀", "tab\tand\nnewline", "trailing space "]


def hangul(s: str) -> bool:
    return any("\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f"
               for c in s)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A byte-fallback BPE base (English only) and a Korean unigram model, trained here."""
    root = tmp_path_factory.mktemp("small")
    base_path = train_sentencepiece(EN, root / "base" / "tokenizer.model", 400)
    corpus = root / "ko.txt"
    corpus.write_text("\n".join(KO) + "\n", encoding="utf-8")
    ko_path = T.train_korean_sp(corpus, 186, root / "ko" / "tokenizer.model")
    return {"root": root, "base_path": base_path, "corpus": corpus, "ko_path": ko_path,
            "base": T.load_sp_model(base_path), "ko": T.load_sp_model(ko_path)}


@pytest.fixture(scope="module")
def merged_all(small):
    proto, info = T.merge_sp(small["base"], small["ko"], mode="all")
    tok = T.save_merged(proto, small["root"] / "merged_all")
    return proto, info, tok


def new_normal_pieces(base, ko) -> list[str]:
    """What the merge should append, computed independently of lib.vocab.merge."""
    have = {p.piece for p in base.pieces}
    return [p.piece for p in ko.pieces if p.type == p.NORMAL and p.piece not in have]


# ----------------------------------------------------------------------------- small models

def test_small_models_are_what_the_tests_assume(small):
    base, ko = small["base"], small["ko"]
    assert len(base.pieces) == 400 and base.trainer_spec.byte_fallback
    assert len(ko.pieces) == 186 and ko.trainer_spec.model_type == ko.trainer_spec.UNIGRAM
    base_sp = spm.SentencePieceProcessor(model_file=str(small["base_path"]))
    # Korean falls apart into UTF-8 bytes in the English base: 3 per syllable
    assert base_sp.encode("햄버거", out_type=str)[1:] == ["<0xED>", "<0x96>", "<0x84>", "<0xEB>",
                                                          "<0xB2>", "<0x84>", "<0xEA>", "<0xB1>", "<0xB0>"]


def test_merge_all_appends_exactly_the_new_pieces(small, merged_all):
    base, ko = small["base"], small["ko"]
    proto, info, _ = merged_all
    expected = new_normal_pieces(base, ko)
    pieces = [p.piece for p in proto.pieces]
    assert len(pieces) == len(base.pieces) + len(expected) == info["merged_size"]
    assert pieces[len(base.pieces):] == expected                       # appended in Korean order
    assert info["added"] == len(expected)
    assert info["added"] + sum(info["skipped"].values()) == len(ko.pieces) == info["korean_size"]
    assert info["skipped"]["control"] == 2 and info["skipped"]["unknown"] == 1
    assert len(set(pieces)) == len(pieces)
    for i, b in enumerate(base.pieces):                                  # every base id kept
        m = proto.pieces[i]
        assert (m.piece, m.score, m.type) == (b.piece, b.score, b.type), i
    assert proto.normalizer_spec == base.normalizer_spec and proto.trainer_spec == base.trainer_spec
    scores = [p.score for p in proto.pieces[len(base.pieces):]]
    assert max(scores) < min(p.score for p in base.pieces)
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert "▁TV" in expected                                             # non-Hangul Korean piece


def test_hangul_mode_adds_only_hangul_pieces(small, merged_all):
    base, ko = small["base"], small["ko"]
    proto, info = T.merge_sp(base, ko, mode="hangul")
    added = [p.piece for p in proto.pieces[len(base.pieces):]]
    expected = [w for w in new_normal_pieces(base, ko) if hangul(w)]
    assert added == expected and all(hangul(w) for w in added)
    assert info["skipped"]["no_hangul"] == len(new_normal_pieces(base, ko)) - len(expected) > 0
    assert len(proto.pieces) == len(base.pieces) + len(expected) < merged_all[1]["merged_size"]
    T.check_merge(base, proto, T.hf_tokenizer_from_sp(proto), KO + EN + TRICKY)


def test_saved_tokenizer_encodes_as_sentencepiece_and_roundtrips(small, merged_all):
    proto, _, tok = merged_all
    samples = KO + EN + TRICKY
    T.check_merge(small["base"], proto, tok, samples)
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    assert [tok.encode(s) for s in samples] == [[1] + ids for ids in sp.encode(samples)]
    text = "햄버거를 먹는 공룡"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    folder = small["root"] / "merged_all"
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer.model",
                                                         "tokenizer_config.json"]
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded.encode("a")[0] == 1 and len(reloaded) == len(proto.pieces)
    assert [reloaded.encode(s) for s in samples] == [tok.encode(s) for s in samples]
    assert T.load_sp_model(folder) == proto


def test_korean_gets_cheaper_and_hangul_mode_leaves_english_alone(small, merged_all):
    before = T.hf_tokenizer_from_sp(small["base"])
    _, _, after_all = merged_all
    after_hangul = T.hf_tokenizer_from_sp(T.merge_sp(small["base"], small["ko"], "hangul")[0])
    stats = T.merge_stats(before, after_all, KO, EN)
    assert stats["ko_tokens_per_char"]["after"] < 0.5 * stats["ko_tokens_per_char"]["before"]
    assert stats["ko_tokens_per_char"]["before"] > 1.0                  # bytes: >1 token per syllable
    # exactly the two English lines with "TV" change in "all" mode ("▁T" "V" -> "▁TV")
    assert stats["en_drift"] == 2 / len(EN)
    assert [r["pieces_after"] for r in T.example_tokenizations(before, after_all, ["TV"])] == [["▁TV"]]
    assert T.en_drift(before, after_hangul, EN) == 0.0
    assert T.tokens_per_char(after_hangul, EN) == T.tokens_per_char(before, EN)

    rows = T.example_tokenizations(before, after_all, ["햄버거를 먹는 공룡", EN[0]])
    # 8 syllables x 3 bytes + 3 "▁" (Llama-2, which knows 를 는 공, needs 21)
    assert rows[0]["tokens_before"] == len(rows[0]["pieces_before"]) == 27
    assert rows[0]["tokens_after"] == len(rows[0]["pieces_after"]) < 27
    assert rows[1]["pieces_before"] == rows[1]["pieces_after"]
    lengths = T.sequence_lengths(after_all, KO)
    assert sum(lengths) == round(T.tokens_per_char(after_all, KO) * sum(map(len, KO)))


def test_appended_scores_fall_even_below_llamas_minus_1e9(small):
    # Llama-2 scores its "▁▁" run pieces -1e9, where float32 steps by 64: scores must still fall.
    base = type(small["base"])()
    base.CopyFrom(small["base"])
    base.pieces[300].score = -1e9
    proto, _ = T.merge_sp(base, small["ko"])
    scores = [p.score for p in proto.pieces[len(base.pieces):]]
    assert scores[0] < -1e9 and all(a > b for a, b in zip(scores, scores[1:]))
    T.check_merge(base, proto, T.hf_tokenizer_from_sp(proto), KO[:20] + EN[:20])


# ----------------------------------------------------------------------------- bad input

def test_unknown_mode_and_unigram_base_are_rejected(small):
    with pytest.raises(ValueError, match=r"'both'.*'all', 'hangul'"):
        T.merge_sp(small["base"], small["ko"], mode="both")
    with pytest.raises(ValueError, match="UNIGRAM.*BPE"):
        T.merge_sp(small["ko"], small["base"])


def test_normalising_base_cannot_be_saved_for_transformers(small, tmp_path):
    base = type(small["base"])()
    base.CopyFrom(small["base"])
    base.normalizer_spec.name = "nmt_nfkc"
    with pytest.raises(ValueError, match="'nmt_nfkc'.*identity normalisation"):
        T.save_merged(T.merge_sp(base, small["ko"])[0], tmp_path / "tok")
    assert list(tmp_path.iterdir()) == []                               # nothing half-written


def test_load_sp_model_names_what_is_wrong(small, tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        T.load_sp_model(missing)
    json_only = tmp_path / "json_only"
    json_only.mkdir()
    (json_only / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"{json_only}.*no tokenizer.model; found: tokenizer.json"):
        T.load_sp_model(json_only)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 8)
    with pytest.raises(ValueError, match=rf"{garbage}: not a SentencePiece model"):
        T.load_sp_model(garbage)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="holds no pieces"):
        T.load_sp_model(empty)
    assert T.load_sp_model(small["base_path"].parent) == T.load_sp_model(str(small["base_path"]))


def test_hub_ids_go_through_hf_hub_download(small, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        if repo_id == "someone/missing":
            raise LocalEntryNotFoundError("offline")
        return str(small["base_path"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert T.load_sp_model("someone/llama") == small["base"]
    with pytest.raises(FileNotFoundError, match="'someone/missing'.*Hub"):
        T.load_sp_model("someone/missing")
    assert calls == [("someone/llama", "tokenizer.model"), ("someone/missing", "tokenizer.model")]


def test_save_merged_refuses_to_replace_without_overwrite(small, merged_all, tmp_path):
    proto = merged_all[0]
    out = tmp_path / "tok"
    T.save_merged(proto, out)
    with pytest.raises(FileExistsError, match=f"{out}.*overwrite=True"):
        T.save_merged(small["base"], out)
    assert T.load_sp_model(out) == proto                                # untouched
    tok = T.save_merged(small["base"], out, overwrite=True)
    assert len(tok) == len(small["base"].pieces) and T.load_sp_model(out) == small["base"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]        # no temp folders left


def test_check_merge_names_the_broken_invariant(small, merged_all):
    base, (proto, _, tok) = small["base"], merged_all

    def broken(edit):
        p = type(proto)()
        p.CopyFrom(proto)
        edit(p)
        return p
    with pytest.raises(AssertionError, match="base id 7 changed"):
        T.check_merge(base, broken(lambda p: setattr(p.pieces[7], "score", 5.0)), tok, KO)
    with pytest.raises(AssertionError, match="occur twice"):
        T.check_merge(base, broken(lambda p: p.pieces.add(piece="▁the", score=-1e6)), tok, KO)
    with pytest.raises(AssertionError, match="must be normal"):
        T.check_merge(base, broken(lambda p: p.pieces.add(piece="<x>", score=-1e6, type=3)), tok, KO)
    base_tok = T.hf_tokenizer_from_sp(base)                               # vocab of the wrong size
    with pytest.raises(AssertionError, match=f"has {len(base.pieces)} tokens"):
        T.check_merge(base, proto, base_tok, KO)
    with pytest.raises(AssertionError, match="starts with whitespace"):
        T.check_merge(base, proto, tok, [" 앞에 공백"])
    with pytest.raises(ValueError, match="no sample lines"):
        T.check_merge(base, proto, tok, [])


def test_train_korean_sp_errors_name_the_corpus(small, tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "none.txt")):
        T.train_korean_sp(tmp_path / "none.txt", 100, tmp_path / "ko.model")
    with pytest.raises(ValueError, match=rf"{small['corpus']}.*Lower korean_vocab_size"):
        T.train_korean_sp(small["corpus"], 5000, tmp_path / "ko.model")


# ----------------------------------------------------------------------------- real tokenizers

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    tok_dir = paths.SHARED_DATA / "tokenizers"
    if not (tok_dir / "llama2" / "tokenizer.model").is_file():
        pytest.skip("../shared/data/tokenizers is absent")
    base = T.load_sp_model(tok_dir / "llama2" / "tokenizer.model")
    ko = T.load_sp_model(tok_dir / "kobert" / "tokenizer.model")
    out = tmp_path_factory.mktemp("real")
    start = time.perf_counter()
    merged, info = T.merge_sp(base, ko, "all")
    tok = T.save_merged(merged, out / "all")
    merge_save_s = time.perf_counter() - start
    par = paths.SHARED_DATA / "parallel"
    return {"base": base, "ko": ko, "merged": merged, "info": info, "tok": tok, "out": out,
            "before": T.hf_tokenizer_from_sp(base), "merge_save_s": merge_save_s,
            "ko_lines": read_lines(par / "news_dev.ko"), "en_lines": read_lines(par / "news_dev.en")}


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_llama2_kobert_union_is_39478(real):
    info = real["info"]
    assert info["merged_size"] == len(real["merged"].pieces) == 39_478
    assert info["added"] == 7_478 and info["added_with_hangul"] == 7_056
    assert info["skipped"] == {"control": 2, "duplicate": 519, "unknown": 1}   # 522 shared
    # Unigram pieces that no BPE merge path reaches (e.g. "▁가장": neither "▁가" nor "가장" exists)
    assert info["unreachable"] == 1_117
    assert real["merge_save_s"] < 30


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_hamburger_dinosaur_21_to_9_tokens(real):
    row, = T.example_tokenizations(real["before"], real["tok"], ["햄버거를 먹는 공룡"])
    assert (row["tokens_before"], row["tokens_after"]) == (21, 9)
    assert row["pieces_after"] == ["▁", "햄", "버", "거", "를", "▁먹", "는", "▁공", "룡"]
    assert len(spm.SentencePieceProcessor(model_proto=real["ko"].SerializeToString())
               .encode("햄버거를 먹는 공룡")) == 9


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_stats_on_news_dev(real):
    ko, en = real["ko_lines"], real["en_lines"]
    stats = T.merge_stats(real["before"], real["tok"], ko, en)
    assert stats["ko_tokens_per_char"]["before"] == pytest.approx(1.4772, abs=1e-4)
    assert stats["ko_tokens_per_char"]["after"] == pytest.approx(0.5585, abs=1e-4)
    assert stats["en_tokens_per_char"]["before"] == pytest.approx(0.2443, abs=1e-4)
    assert stats["en_drift"] == 0.241                       # 241 of 1,000 lines: "▁10", "00", ...
    hangul_proto, info = T.merge_sp(real["base"], real["ko"], "hangul")
    assert info["merged_size"] == 39_056
    hangul_tok = T.hf_tokenizer_from_sp(hangul_proto)
    assert T.en_drift(real["before"], hangul_tok, en) == 0.0
    assert T.tokens_per_char(hangul_tok, ko) == pytest.approx(0.5773, abs=1e-4)
    T.check_merge(real["base"], hangul_proto, hangul_tok, ko + en)


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_hf_equals_sentencepiece_and_reloads(real):
    ko, en = real["ko_lines"], real["en_lines"]
    T.check_merge(real["base"], real["merged"], real["tok"], ko + en)   # all 2,000 lines
    reloaded = AutoTokenizer.from_pretrained(real["out"] / "all")
    sample = ko[:300] + en[:300] + ["햄버거를 먹는 공룡"]
    assert [reloaded.encode(s) for s in sample] == [real["tok"].encode(s) for s in sample]
    assert T.load_hf_tokenizer(real["out"] / "all").encode("공룡") == real["tok"].encode("공룡")


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_double_spaces_need_score_ordered_merges(real):
    """transformers' own conversion ranks merges by id, so Llama-2's "▁▁" (id 259, score -1e9)
    merges first and text with double spaces splits unlike sentencepiece; ours does not."""
    lines = [s for s in read_lines(paths.SHARED_DATA / "mono" / "en" / "mlqa_contexts.txt") if "  " in s]
    assert len(lines) >= 100
    T.check_merge(real["base"], real["merged"], real["tok"], lines)
    stock = LlamaTokenizerFast.from_pretrained(paths.SHARED_DATA / "tokenizers" / "llama2")
    sp = spm.SentencePieceProcessor(model_proto=real["base"].SerializeToString())
    differ = sum(stock.encode(s, add_special_tokens=False) != ids for s, ids in zip(lines, sp.encode(lines)))
    assert differ > 100
