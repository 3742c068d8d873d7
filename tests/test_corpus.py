"""Corpora through ``datasets``: the cached, memory-mapped blocks equal the in-memory ones,
a second call reuses the cache instead of tokenizing again, and bad files are named."""
from __future__ import annotations

import pytest
import torch
from conftest import EN_LINES, KO_LINES

from lib.core.readers import DataError
from lib.data.corpus import cached_blocks
from lib.data.packing import MixedStream, pack_file


@pytest.fixture(scope="module")
def tok(tiny_assets):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_assets["model"])


@pytest.fixture
def corpus(tmp_path):
    lines = []
    for i, line in enumerate((KO_LINES + EN_LINES) * 3):
        lines.append(line)
        if i % 17 == 0:
            lines.append("   ")                 # blank lines are skipped, as read_lines does
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cached_blocks_equal_in_memory_packing(tok, corpus, tmp_path):
    for limit in (None, 100):
        cached, rep = cached_blocks(tok, corpus, 48, cache_dir=tmp_path / "cache", limit=limit)
        plain, rep_plain = pack_file(tok, corpus, 48, limit=limit, cache=False)
        assert cached.dtype == torch.int32 and cached.shape == plain.shape and cached.shape[0] > 20
        assert torch.equal(cached.long(), plain)
        assert {k: rep[k] for k in rep_plain} == rep_plain


def test_a_second_call_reuses_the_cache(tok, corpus, tmp_path):
    _, rep = cached_blocks(tok, corpus, 48, cache_dir=tmp_path / "cache")
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    again, rep2 = cached_blocks(tok, corpus, 48, cache_dir=cache)
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file() and p in before}
    assert rep2 == rep and after == before            # nothing rewritten: no second tokenization
    assert sum(p.suffix == ".int32" for p in before) == 1
    _, rep64 = cached_blocks(tok, corpus, 64, cache_dir=cache)     # another block size: new file only
    assert rep64["cache"] != rep["cache"] and rep64["tokens"] == rep["tokens"]


def test_streams_over_cached_and_plain_blocks_are_the_same(tok, corpus, tmp_path):
    cached, _ = cached_blocks(tok, corpus, 32, cache_dir=tmp_path / "cache")
    plain, _ = pack_file(tok, corpus, 32, cache=False)
    a = MixedStream({"ko": cached}, batch_size=4, seed=3, bos_token_id=tok.bos_token_id)
    b = MixedStream({"ko": plain}, batch_size=4, seed=3, bos_token_id=tok.bos_token_id)
    for step in (0, 1, 7):
        x, y = a.batch(step), b.batch(step)
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "attention_mask", "labels"))
        assert x["input_ids"].dtype == torch.long


def test_pack_file_uses_the_cache_when_asked_or_large(tok, corpus, tmp_path, monkeypatch):
    import lib.data.packing as P
    assert pack_file(tok, corpus, 32)[0].dtype == torch.long          # small: in memory
    monkeypatch.setattr(P, "CACHE_MIN_BYTES", 1)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    blocks, rep = pack_file(tok, corpus, 32)
    assert blocks.dtype == torch.int32 and str(tmp_path / "hf") in rep["cache"]


def test_bad_files_are_named(tok, tmp_path):
    with pytest.raises(DataError, match="missing.txt: file not found"):
        cached_blocks(tok, tmp_path / "missing.txt", 32, cache_dir=tmp_path / "c")
    short = tmp_path / "short.txt"
    short.write_text("한 줄\n", encoding="utf-8")
    with pytest.raises(ValueError, match="short.txt: its .* tokens are shorter than one block"):
        cached_blocks(tok, short, 4096, cache_dir=tmp_path / "c")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("좋은 줄\n".encode() + b"\xff\xfe broken\n")
    with pytest.raises(DataError, match="bad.txt, line 2: not UTF-8"):
        cached_blocks(tok, bad, 4, cache_dir=tmp_path / "c")


# ---------------------------------------------------------------- JSONL files and Hub-style ids

def _jsonl(path, lines, field="text"):
    import json
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps({"id": i, field: line}, ensure_ascii=False) + "\n")
    return path


def test_jsonl_and_dataset_folder_pack_like_the_text_file(tok, corpus, tmp_path):
    from lib.data.corpus import parse_corpus
    lines = [l for l in corpus.read_text(encoding="utf-8").splitlines() if l.strip()]
    plain, _ = pack_file(tok, corpus, 48, cache=False)
    jl = _jsonl(tmp_path / "mixed.jsonl", lines + ["  "])          # a blank document is skipped
    folder = tmp_path / "hubdir"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", lines, field="body")
    for spec in (str(jl), f"{jl}#text", f"hub:{folder}//train#body"):
        src = parse_corpus(spec)
        blocks, rep = cached_blocks(tok, src, 48, cache_dir=tmp_path / "cache")
        assert torch.equal(blocks.long(), plain), spec
        assert rep["docs"] == len(lines) and rep["path"].endswith(("#text", "#body"))
    assert parse_corpus(f"{jl}").kind == "jsonl" and parse_corpus(str(corpus)).kind == "text"
    hub = parse_corpus("hub:wikimedia/wikipedia/20231101.ko/train")
    assert (hub.kind, hub.dataset, hub.config, hub.split, hub.field) == \
        ("hub", "wikimedia/wikipedia", "20231101.ko", "train", "text")
    blocks, _ = pack_file(tok, parse_corpus(str(jl)), 48)         # pack_file routes JSONL to the cache
    assert blocks.dtype == torch.int32 and torch.equal(blocks.long(), plain)


def test_bad_corpus_sources_are_named(tok, tmp_path):
    from lib.data.corpus import parse_corpus
    jl = _jsonl(tmp_path / "c.jsonl", ["한국어 문장입니다."] * 40)
    with pytest.raises(DataError, match=r"c.jsonl#content: no field 'content' \(fields: id, text\)"):
        cached_blocks(tok, parse_corpus(f"{jl}#content"), 8, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="is not 'hub:<dataset>/<config>/<split>"):
        parse_corpus("hub:only-a-name")
    with pytest.raises(DataError, match=r"no-such/dataset//train: could not load the dataset"):
        cached_blocks(tok, parse_corpus(f"hub:{tmp_path}/no-such/dataset//train"), 8, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="gone.jsonl: file not found"):
        cached_blocks(tok, parse_corpus(str(tmp_path / "gone.jsonl")), 8, cache_dir=tmp_path / "cache")
