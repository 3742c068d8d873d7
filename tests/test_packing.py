"""Packing and Ko/En mixing (lib.data.packing): exact blocks, ratios, cycling, resumption, rank split."""
from __future__ import annotations

import pytest
import torch
from conftest import EN_LINES, KO_LINES

from lib.data.packing import (
    MixedStream,
    nonpad_fraction,
    pack,
    pack_file,
    packing_report,
    pad_naive,
    stream_stats,
    tokenize_lines,
)
from lib.modeling.losses import IGNORE_INDEX

# BOS=1, EOS=2; lengths 4 + 3 + 6 = 13 tokens
DOCS = [[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 11, 2]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model
    from lib.vocab.sptrain import train_sentencepiece
    path = train_sentencepiece(EN_LINES + KO_LINES, tmp_path_factory.mktemp("sp") / "t.model", 400,
                               hard_vocab_limit=False)
    return hf_tokenizer_from_sp(load_sp_model(path))


def numbered(n: int, block_size: int = 4, offset: int = 0) -> torch.Tensor:
    """Block i is filled with the value offset + i, so a row says which block it is."""
    return (torch.arange(n) + offset)[:, None].repeat(1, block_size)


def two_sources(**kw) -> MixedStream:
    args = dict(batch_size=4, seed=0)
    args.update(kw)
    return MixedStream({"ko": numbered(50), "en": numbered(20, offset=1000)}, {"ko": 0.7, "en": 0.3},
                       **args)


# ----------------------------------------------------------------------------- packing

def test_pack_exact_blocks_and_remainder():
    blocks = pack(DOCS, 4)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == [[1, 5, 6, 2], [1, 7, 2, 1], [8, 9, 10, 11]]   # the final 2 is dropped
    assert packing_report(DOCS, 4) == {"docs": 3, "tokens": 13, "block_size": 4, "blocks": 3,
                                       "dropped_tokens": 1}
    assert pack(DOCS, 13).tolist() == [sum(DOCS, [])]
    assert pack(DOCS, 14).shape == (0, 14)
    assert pack(DOCS, 5, dtype=torch.int32).dtype == torch.int32


def test_nonpad_packed_vs_naive():
    naive = pad_naive(DOCS, 4, pad_id=0)
    assert naive["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0], [1, 8, 9, 10]]
    assert naive["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert nonpad_fraction(naive) == 11 / 12
    assert nonpad_fraction(pad_naive(DOCS, 6)["attention_mask"]) == 13 / 18   # 4 + 3 + 6 of 18
    stream = MixedStream({"x": pack(DOCS, 4)}, batch_size=3)
    assert nonpad_fraction(stream.batch(0)) == 1.0
    with pytest.raises(ValueError, match="input_ids instead of the mask"):
        nonpad_fraction(naive["input_ids"])


def test_tokenize_lines_adds_bos_eos_and_packs_losslessly(tok):
    lines = KO_LINES[:5] + EN_LINES[:5]
    docs = tokenize_lines(tok, lines)
    plain = [tok(s, add_special_tokens=False)["input_ids"] for s in lines]
    assert docs == [[tok.bos_token_id] + p + [tok.eos_token_id] for p in plain]
    assert tokenize_lines(tok, lines, add_bos=False, add_eos=False) == plain
    assert tokenize_lines(tok, lines, chunk=3) == docs
    blocks = pack(docs, 16)
    flat = sum(docs, [])
    assert blocks.flatten().tolist() == flat[:len(blocks) * 16]
    assert tok.decode(blocks.flatten().tolist()[1:len(docs[0]) - 1]) == lines[0]


def test_a_literal_special_token_in_the_text_is_not_a_document_boundary(tok):
    """``<s>`` / ``</s>`` written in a document are text: one BOS and one EOS per document, so
    ``packing: documents`` keeps it whole; the datasets path (lib.data.corpus) encodes alike."""
    from lib.data.corpus import _encode_rows
    from lib.data.packing import document_positions
    lines = ["the tag <s> opens and </s> closes", EN_LINES[0]]
    docs = tokenize_lines(tok, lines)
    for d in docs:
        assert d.count(tok.bos_token_id) == 1 and d.count(tok.eos_token_id) == 1
        assert d[0] == tok.bos_token_id and d[-1] == tok.eos_token_id
    assert "<s>" in tok.decode(docs[0][1:-1])
    row = torch.tensor([docs[0] + docs[1]])
    pos = document_positions(row, tok.bos_token_id)[0].tolist()
    assert pos == list(range(len(docs[0]))) + list(range(len(docs[1])))
    enc = _encode_rows({"text": lines}, tok, tok.bos_token_id, tok.eos_token_id)["ids"]
    assert enc == docs


def test_pack_file_reports_and_rejects_short_text(tok, tmp_path):
    path = tmp_path / "ko.txt"
    path.write_text("\n".join(KO_LINES[:20]) + "\n", encoding="utf-8")
    blocks, report = pack_file(tok, path, 32)
    assert report["blocks"] == len(blocks) > 0 and report["docs"] == 20
    assert report["tokens"] == report["blocks"] * 32 + report["dropped_tokens"]
    with pytest.raises(ValueError, match=r"ko\.txt.*shorter than one block of 100000"):
        pack_file(tok, path, 100_000)


# ----------------------------------------------------------------------------- mixing

def test_same_step_same_batch_and_seeds_differ():
    a, b = two_sources(), two_sources()
    for step in (0, 7, 123):
        x, y = a.batch(step), b.batch(step)
        assert all(torch.equal(x[k], y[k]) for k in x)
    other = two_sources(seed=1)
    assert any(not torch.equal(a.batch(s)["input_ids"], other.batch(s)["input_ids"]) for s in range(5))
    assert not torch.equal(a.batch(0)["input_ids"], a.batch(1)["input_ids"])


def test_resume_equals_uninterrupted():
    walked = two_sources(grad_accum=2)
    seen = [walked.batch(s, m) for s in range(40) for m in range(2)]
    for s in (0, 13, 25, 39):
        fresh = two_sources(grad_accum=2)          # a resumed run: nothing iterated before step s
        for m in range(2):
            assert torch.equal(fresh.batch(s, m)["input_ids"], seen[2 * s + m]["input_ids"])


def test_ratio_exact_per_batch_and_over_run():
    stream = two_sources()
    ko = [int((stream.batch(s)["source"] == stream.names.index("ko")).sum()) for s in range(200)]
    assert set(ko) == {2, 3}                      # floor / ceil of 4 * 0.7 = 2.8
    assert abs(sum(ko) / 800 - 0.7) <= 0.02
    assert sum(ko) == 560                         # exactly: within half a row of 0.7 * 800
    for n in range(0, 2000, 7):                   # every prefix of the run, not just the end
        assert abs(stream.rows_before(n)["ko"] - 0.7 * n) <= 0.5
    assert stream_stats(stream, 200)["sources"]["ko"]["realised_ratio"] == 0.7


def test_three_sources_never_negative_and_close():
    stream = MixedStream({"a": numbered(9), "b": numbered(9), "c": numbered(9)},
                         {"a": 0.5, "b": 0.3, "c": 0.2}, batch_size=3)
    prev = stream.rows_before(0)
    for n in range(1, 3000):
        now = stream.rows_before(n)
        assert sum(now.values()) == n
        assert all(0 <= now[k] - prev[k] <= 1 for k in now)       # non-decreasing: no negative counts
        assert all(abs(now[k] - n * stream.ratios[k]) <= 1 for k in now)
        prev = now
    counts = torch.bincount(torch.cat([stream.batch(s)["source"] for s in range(200)]), minlength=3)
    assert torch.allclose(counts / 600, torch.tensor([0.5, 0.3, 0.2]), atol=0.02)


def test_cycling_every_block_once_per_pass():
    stream = MixedStream({"small": numbered(3)}, batch_size=2, seed=3)
    order = stream.source_order("small", 0, 12).tolist()
    passes = [order[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(p) == [0, 1, 2] for p in passes)
    assert len({tuple(p) for p in passes}) > 1    # a new permutation each pass
    rows = [r[0] for s in range(6) for r in stream.batch(s)["input_ids"].tolist()]
    assert sorted(rows) == [0] * 4 + [1] * 4 + [2] * 4
    for s in range(6):                            # each batch holds its two blocks of the order
        assert sorted(stream.batch(s)["input_ids"][:, 0].tolist()) == sorted(order[2 * s:2 * s + 2])
    assert stream.epochs_seen(6) == {"small": 4.0}
    assert stream_stats(stream, 6)["sources"]["small"]["cycles"] == 3


def test_smaller_source_cycles_alone():
    stream = two_sources()                        # 50 ko blocks, 20 en blocks
    stats = stream_stats(stream, 100)             # 400 rows: 280 ko, 120 en
    ko, en = stats["sources"]["ko"], stats["sources"]["en"]
    assert (ko["rows"], en["rows"]) == (280, 120)
    assert (ko["epochs"], en["epochs"]) == (5.6, 6.0)
    assert (ko["cycles"], en["cycles"]) == (5, 5)
    assert (ko["tokens"], stats["tokens"]) == (280 * 4, 400 * 4)
    en_rows = [v for s in range(100) for v in stream.batch(s)["input_ids"][:, 0].tolist() if v >= 1000]
    assert sorted(en_rows) == sorted(list(range(1000, 1020)) * 6)


def test_rank_split_interleaves_to_world_one():
    stream = two_sources(batch_size=6, grad_accum=2)
    for s, m in ((0, 0), (5, 1), (31, 0)):
        full = stream.batch(s, m)
        parts = [stream.batch(s, m, rank=r, world=2) for r in range(2)]
        assert parts[0]["input_ids"].shape == (3, 4)
        merged = torch.empty_like(full["input_ids"])
        merged[0::2], merged[1::2] = parts[0]["input_ids"], parts[1]["input_ids"]
        assert torch.equal(merged, full["input_ids"])
        assert torch.equal(torch.cat([p["source"] for p in parts]).sort().values,
                           full["source"].sort().values)
    # rows are shuffled inside a micro-batch, so each rank also gets the mix (unshuffled, the
    # source-sorted rows [en, ko, ko, ko] would give rank 0 a 0.5 Korean share, rank 1 all Korean)
    four = two_sources()
    for rank in range(2):
        src = torch.cat([four.batch(s, 0, rank, 2)["source"] for s in range(200)])
        assert abs(float((src == four.names.index("ko")).float().mean()) - 0.7) < 0.05
    with pytest.raises(ValueError, match="does not split evenly over 4"):
        stream.batch(0, 0, rank=0, world=4)


def test_labels_shape_and_bos_mask():
    blocks = pack(DOCS * 4, 4)
    plain = MixedStream({"x": blocks}, batch_size=5).batch(0)
    assert plain["labels"].shape == plain["input_ids"].shape == (5, 4)
    assert torch.equal(plain["labels"], plain["input_ids"])      # packed: every position a target
    masked = MixedStream({"x": blocks}, batch_size=5, bos_token_id=1).batch(0)
    ids, labels = masked["input_ids"], masked["labels"]
    assert torch.equal(labels == IGNORE_INDEX, ids == 1)
    assert torch.equal(labels[ids != 1], ids[ids != 1])


def test_errors_are_clear():
    ko, en = numbered(5), numbered(5)
    with pytest.raises(ValueError, match="sum to 1.*sum 0.9"):
        MixedStream({"ko": ko, "en": en}, {"ko": 0.6, "en": 0.3})
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['jp'\]"):
        MixedStream({"ko": ko, "en": en}, {"ko": 0.7, "jp": 0.3})
    with pytest.raises(ValueError, match=r"no ratio for source\(s\) \['en'\]"):
        MixedStream({"ko": ko, "en": en}, {"ko": 1.0})
    with pytest.raises(ValueError, match="ratios are required"):
        MixedStream({"ko": ko, "en": en})
    with pytest.raises(ValueError, match="source 'en' has no blocks.*shorter than one block of 8"):
        MixedStream({"ko": pack(DOCS, 4), "en": pack(DOCS[:1], 8)}, {"ko": 0.5, "en": 0.5})
    with pytest.raises(ValueError, match="different block sizes"):
        MixedStream({"ko": pack(DOCS, 4), "en": pack(DOCS, 5)}, {"ko": 0.5, "en": 0.5})
    for f in (pack, pad_naive, packing_report):
        with pytest.raises(ValueError, match="block_size must be >= 2"):
            f(DOCS, 1)
    stream = MixedStream({"ko": ko}, batch_size=2, grad_accum=2)
    with pytest.raises(ValueError, match="micro < grad_accum=2"):
        stream.batch(0, 2)
    with pytest.raises(ValueError, match="0 <= rank < world"):
        stream.batch(0, 0, rank=2, world=2)
