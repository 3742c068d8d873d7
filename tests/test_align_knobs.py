"""The transfer grid's knobs (issue 14): word pairs, word-level InfoNCE, several layers, a shared
head in stage 1, and the contrastive term kept in stage 05. Each changes what it should and
nothing else."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lib.core.params import notebook_params
from lib.core.stage import resolve
from lib.data import wordpairs as WP
from lib.train import align_terms as AT
from lib.train import contrastive as C
from tests.test_contrastive import OBJ, PLACE, SUBJ, VERB, lexicon_pairs, write_pair_files

DICTIONARY = [(e, k) for k, e in SUBJ + OBJ + VERB + PLACE]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "one_thread")   # conftest: accelerate reset, one torch thread


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    out = write_pair_files(root)
    # the Korean side of the dictionary is the stem: 고양이 matches the eojeol 고양이가
    stems = [(e, k[:-1] if k.endswith(("가", "이", "를", "을")) and len(k) > 2 else k) for e, k in DICTIONARY]
    out["words"] = WP.write_pairs(root / "words.jsonl", stems)
    return out


def stage1(tmp_path, assets, files, **over):
    ns = {k: p.default for k, p in notebook_params(C.STAGE).items()}
    ns.update(run=str(tmp_path / "run"), init_from=str(assets["model"]), report_to="none",
              pairs_ko=str(files["train_ko"]), pairs_en=str(files["train_en"]),
              heldout_ko=str(files["heldout_ko"]), heldout_en=str(files["heldout_en"]),
              word_pairs=str(files["words"]), batch_size=16, max_len=32, steps=6, lr=3e-3,
              warmup_steps=1, eval_every=0, save_every=0)
    ns.update(over)
    return resolve(C.STAGE, ns)


# ----------------------------------------------------------------------------- word pairs

def test_word_pair_files_read_both_formats_and_refuse_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"en": "doctor", "ko": "의사"}\n\n{"en": "doctor", "ko": "의사"}\n', encoding="utf-8")
    (tmp_path / "b.tsv").write_text("# comment\nschool\t학교\n", encoding="utf-8")
    assert WP.read_pairs(tmp_path / "a.jsonl") == [("doctor", "의사")]
    assert WP.read_pairs(tmp_path / "b.tsv") == [("school", "학교")]
    (tmp_path / "c.jsonl").write_text('{"en": "doctor", "ko": "의사"}\n{"en": "two words", "ko": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.jsonl:2: a word pair needs one word"):
        WP.read_pairs(tmp_path / "c.jsonl")
    with pytest.raises(FileNotFoundError, match="lib.cli.wordpairs extracts one"):
        WP.read_pairs(tmp_path / "missing.jsonl")


def test_locator_aligns_words_once_per_side_and_korean_by_eojeol_start():
    loc = WP.Locator([("cat", "고양이"), ("school", "학교"), ("the", "그")])
    got = loc.aligned("고양이가 학교에서 본다.", "The cat sees the school.")
    ko, en = "고양이가 학교에서 본다.", "The cat sees the school."
    found = {loc.pairs[i]: (ko[a:b], en[c:d]) for i, (a, b), (c, d) in got}
    # 'the' occurs twice in English (and 그 never in Korean): no single position, left out
    assert found == {("cat", "고양이"): ("고양이", "cat"), ("school", "학교"): ("학교", "school")}
    assert loc.find_ko("고양이를 집고양이") == [(0, 0, 3)]          # a prefix only at an eojeol start


def test_extraction_recovers_the_lexicon_from_a_parallel_corpus():
    ko, en = zip(*lexicon_pairs())
    pairs, scores = WP.extract(list(ko), list(en), min_count=3, min_dice=0.5)
    # the particle never varies in this corpus, so the whole eojeol ties with its stem and wins
    truth = [(e, k + "에서" if (k, e) in PLACE else k) for e, k in DICTIONARY]
    print(f"\n{len(pairs)} pairs, precision {WP.precision_against(pairs, truth):.2f}: {pairs[:6]}")
    assert WP.precision_against(pairs, truth) == 1.0
    assert len(pairs) == len(truth)                    # every content word, no function word
    assert all(s["dice"] == 1.0 for s in scores)


def test_word_spans_point_at_the_words_tokens(tiny_assets, files):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    ko = files["train_ko"].read_text(encoding="utf-8").splitlines()[:8]
    en = files["train_en"].read_text(encoding="utf-8").splitlines()[:8]
    loc = WP.Locator(WP.read_pairs(files["words"]))
    spans = AT.word_spans(tok, ko, en, 32, loc)
    from lib.modeling.represent import encode_batch
    ids_ko, ids_en = encode_batch(tok, ko, 32)["input_ids"], encode_batch(tok, en, 32)["input_ids"]
    assert all(len(s) == 4 for s in spans)             # subject, object, verb, place in every pair
    for r, rows in enumerate(spans):
        for pid, ks, ke, es, ee in rows:
            e_word, k_word = loc.pairs[pid]
            assert tok.decode(ids_en[r, es:ee]).strip().lower() == e_word
            assert tok.decode(ids_ko[r, ks:ke]).strip().startswith(k_word[:1])
    batch = AT.batch_spans(spans, [3, 5])
    assert batch.shape == (8, 6) and set(batch[:, 0].tolist()) == {0, 1}


def test_masked_info_nce_drops_same_word_negatives():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    b[1] = b[0]                                   # the same word twice in the batch
    ids = torch.tensor([7, 7, 1, 2])
    got = AT.masked_info_nce(a, b, ids, 0.1)
    plain = AT.masked_info_nce(a, b, torch.arange(4), 0.1)
    from lib.modeling.losses import info_nce
    assert plain == pytest.approx(info_nce(a, b, 0.1).item(), rel=1e-6)
    assert got < plain                            # the duplicate no longer competes with the positive


def test_layer_lists():
    assert AT.layer_list("representation", 5) is None
    assert AT.layer_list("all", 5) == [1, 2, 3, 4]
    assert AT.layer_list("3,-1,3", 5) == [3, 4]
    for bad in ("every", "1,x", ""):
        with pytest.raises(ValueError, match="layers must be"):
            AT.check_layers(bad)
    with pytest.raises(ValueError, match="out of range"):
        AT.layer_list("7", 5)


# ----------------------------------------------------------------------------- stage 1

def test_word_objective_finds_words_in_every_batch_and_learns(tmp_path, tiny_assets, files):
    cfg = stage1(tmp_path, tiny_assets, files, objective="both", steps=30)
    m = C.run(cfg)
    rows = m["curves"]["loss"]
    assert m["objective"] == "both" and m["word_spans"]["words_per_pair"] == 4.0
    assert all(r["words_in_batch"] == 64 for r in rows)           # 16 pairs x 4 words
    assert all(r["loss"] == pytest.approx(r["info_nce"] + r["word_nce"], rel=1e-5) for r in rows)
    w = [r["word_nce"] for r in rows]
    assert np.mean(w[-5:]) < 0.7 * np.mean(w[:5])
    start, end = load_file(str(tiny_assets["model"] / "model.safetensors")), load_file(str(cfg.stage_dir / "model" / "model.safetensors"))
    assert torch.equal(start["lm_head.weight"], end["lm_head.weight"])      # the head is still frozen

    only = C.run(stage1(tmp_path / "w", tiny_assets, files, objective="word", steps=2))
    assert all("info_nce" not in r and r["word_nce"] > 0 for r in only["curves"]["loss"])


def test_layers_all_averages_the_loss_over_every_layer(tmp_path, tiny_assets, files):
    cfg = stage1(tmp_path, tiny_assets, files, layers="all", layer=1, steps=2)
    s = C.build(cfg)
    assert s.encoder.layers == [1, 2] and s.info["layers_frozen_above_representation"] == []
    batch = C.batch_fn(s)(0, 0, 0, 1)
    pairs = C.stack_batches([batch["ko"], batch["en"]])
    vecs, _, extra = s.encoder(pairs)
    assert len(extra["layer_vecs"]) == 2
    from lib.modeling.losses import info_nce
    loss, logs = AT.alignment_loss(cfg, vecs[:16], vecs[16:], extra, None)
    want = np.mean([info_nce(v[:16], v[16:], 0.05).item() for v in extra["layer_vecs"]])
    assert logs["info_nce"] == pytest.approx(want, rel=1e-5)
    # layer 1 alone (the default) leaves the top block untrained; 'all' trains it
    assert C.build(stage1(tmp_path / "one", tiny_assets, files, layer=1)).info["layers_frozen_above_representation"] == [1]


@pytest.fixture(scope="module")
def korean_rows_model(tiny_assets, files, tmp_path_factory):
    """The tiny model with one new row per Korean dictionary word (as 01 + 02 would add)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path_factory.mktemp("ko_rows")
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    tok.add_tokens([k for _, k in WP.read_pairs(files["words"])])
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_align_head_moves_only_korean_rows_toward_their_english_rows(tmp_path, tiny_assets, files, korean_rows_model):
    cfg = stage1(tmp_path, tiny_assets, files, align_head=True, steps=20, lr=1e-2,
                 init_from=str(korean_rows_model))
    s = C.build(cfg)
    ko_ids, en_ids = s.encoder.head_ids
    assert len(ko_ids) == 14 and int(ko_ids.min()) >= 330    # one new row per Korean word
    before = s.model.lm_head.weight.detach().clone()
    d0 = AT.head_alignment_loss(before, ko_ids, en_ids).item()
    m = C.run(cfg)
    after = load_file(str(cfg.stage_dir / "model" / "model.safetensors"))["lm_head.weight"]
    other = torch.ones(len(after), dtype=torch.bool)
    other[ko_ids] = False
    assert torch.equal(after[other], before[other])               # every other row bit-identical
    assert not torch.equal(after[ko_ids], before[ko_ids])
    d1 = AT.head_alignment_loss(after, ko_ids, en_ids).item()
    print(f"\nhead distance {d0:.3f} -> {d1:.3f} over {len(ko_ids)} Korean rows")
    assert d1 < 0.8 * d0 and m["align_head"]["rows"] == len(ko_ids)
    assert all("head_align" in r for r in m["curves"]["loss"])


def test_knob_misuse_fails_before_work(tmp_path, tiny_assets, files):
    for over, msg in ((dict(objective="words"), "objective must be one of"),
                      (dict(objective="word", english_encoder="frozen"), "need english_encoder: shared"),
                      (dict(layers="all", layer_range=[1, 2]), "set layer_range"),
                      (dict(layers="2,x"), "layers must be")):
        with pytest.raises(ValueError, match=msg):
            C.check_config(stage1(tmp_path, tiny_assets, files, **over))
    from lib.core.readers import DataError
    (tmp_path / "none.jsonl").write_text('{"en": "zebra", "ko": "얼룩말"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="none of its words occurs"):
        C.build(stage1(tmp_path, tiny_assets, files, objective="word", word_pairs=str(tmp_path / "none.jsonl")))


# ----------------------------------------------------------------------------- stage 05

def test_pretrain_keeps_the_contrastive_term_with_align_weight(tmp_path, tiny_assets, files):
    from lib.modeling.represent import embed_texts
    from lib.train import pretrain
    from tests.test_stages_clm import make_cfg
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets, align_weight=0.5, steps=20, lr=3e-3,
                   align_pairs_ko=str(files["train_ko"]), align_pairs_en=str(files["train_en"]),
                   align_batch_size=16, save_every=0, eval_every=0)
    m = pretrain.run(cfg)
    rows = [r for r in m["curves"]["info_nce"]]
    assert m["align_weight"] == 0.5 and m["alignment"]["align_pairs"] == 96
    assert len(rows) == 20 and all(r > 0 for r in rows)
    assert np.mean(rows[-5:]) < np.mean(rows[:5])                 # the kept term is optimised
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model")   # a plain folder, as before
    tok = AutoTokenizer.from_pretrained(cfg.stage_dir / "model")
    assert embed_texts(out, tok, ["고양이가 본다."]).shape[0] == 1
    (tmp_path / "p").mkdir()
    plain = pretrain.run(make_cfg("05_stage3_pretrain", tmp_path / "p", tiny_assets, steps=2, save_every=0, eval_every=0))
    assert plain["alignment"] is None and "info_nce" not in plain["curves"]
