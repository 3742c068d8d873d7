"""The oracle controls of 02 on a clone world: a random tiny Llama whose Korean rows are copied
from English reads every Korean question exactly as its English twin; alpha blends; a derangement
breaks it; English rows never move. Also the transfer ratio's arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lib.modeling.model as M
import lib.vocab.merge as T
import lib.vocab.oracle as O
from lib.core.prompts import QA_PROMPTS as PROMPTS
from lib.core.stats import Item, paired_metrics, transfer_ratio
from lib.modeling.mcscore import score_choices
from lib.world import WorldSpec, build_world, file_lines, read_jsonl, write_world
from lib.world.basemodel import BaseModelSpec, load_tokenizer, new_model, train_base_tokenizer, train_korean_tokenizer


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """Micro clone world, its two tokenizers, the Hangul-only merge and a random base model."""
    root = tmp_path_factory.mktemp("clone")
    write_world(build_world(WorldSpec.micro()), root)
    spec = BaseModelSpec.micro()
    train_base_tokenizer(root, root / "base", spec.base_vocab_size)
    train_korean_tokenizer(root, root / "ko", spec.korean_vocab_size)
    merged, _ = T.merge_sp(T.load_sp_model(root / "base/tokenizer.model"), T.load_sp_model(root / "ko/tokenizer.model"),
                           mode="hangul")
    merged_tok = T.save_merged(merged, root / "merged")
    base_tok = load_tokenizer(root / "base")
    return root, base_tok, merged_tok


def model_for(clone, init="subword_mean", alpha=1.0, seed=0):
    root, base_tok, merged_tok = clone
    torch.manual_seed(seed)
    model = new_model(BaseModelSpec.micro(), len(base_tok)).eval()
    info = O.initialise(model, base_tok, merged_tok, init, alpha, root / "data/word_map.jsonl")
    return model, info


def question_scores(model, tok, root, lang, n=12):
    rows = read_jsonl(root / f"eval/knowledge_{lang}.jsonl")[:n]
    return [score_choices(model, tok, PROMPTS[lang].format(q=r["question"]), r["choices"]["text"]) for r in rows]


def test_token_map_covers_the_clone_and_sample_lines_map_exactly(clone):
    root, base_tok, merged_tok = clone
    tmap = O.token_map(base_tok, merged_tok, O.read_word_map(root / "data/word_map.jsonl"))
    assert len(tmap.pairs) >= 250 and not tmap.skipped["korean_in_base_vocab"]
    assert all(k >= len(base_tok) > e for e, k in tmap.pairs.items())       # English base row -> Korean new row
    assert len(set(tmap.pairs.values())) == len(tmap.pairs)                 # one-to-one
    en, ko = file_lines(root / "data/sample.en"), file_lines(root / "data/sample.ko")
    assert O.image_rate(tmap, base_tok, merged_tok, en, ko) == 1.0
    assert O.image_rate(tmap, base_tok, merged_tok, en, ko[1:] + ko[:1]) < 0.1   # misaligned lines do not map


def test_oracle_reads_korean_exactly_as_english(clone):
    root, base_tok, merged_tok = clone
    model, info = model_for(clone, "oracle")
    assert info["oracle"]["mapped_tokens"] >= 250 and info["oracle"]["alpha"] == 1.0
    en = question_scores(model, merged_tok, root, "en")
    ko = question_scores(model, merged_tok, root, "ko")
    np.testing.assert_allclose(np.array(ko), np.array(en), rtol=0, atol=1e-4)
    # ... while the ordinary initialisation does not
    plain, _ = model_for(clone, "subword_mean")
    assert np.abs(np.array(question_scores(plain, merged_tok, root, "ko")) - np.array(en)).max() > 0.05


def test_english_rows_never_move_and_alpha_blends(clone):
    root, base_tok, merged_tok = clone
    plain, _ = model_for(clone, "subword_mean")
    half, _ = model_for(clone, "oracle", alpha=0.5)
    full, _ = model_for(clone, "oracle", alpha=1.0)
    zero, _ = model_for(clone, "oracle", alpha=0.0)
    n = len(base_tok)
    tmap = O.token_map(base_tok, merged_tok, O.read_word_map(root / "data/word_map.jsonl"))
    e, k = next(iter(tmap.pairs.items()))
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        assert torch.equal(get(full)[:n], get(plain)[:n]) and torch.equal(get(half)[:n], get(plain)[:n])
        assert torch.equal(get(zero), get(plain))                           # alpha 0 is the ordinary init
        torch.testing.assert_close(get(full)[k], get(plain)[e])            # alpha 1 copies the English row
        torch.testing.assert_close(get(half)[k], 0.5 * get(plain)[e] + 0.5 * get(plain)[k])


def test_deranged_copies_the_wrong_words(clone):
    root, base_tok, merged_tok = clone
    model, info = model_for(clone, "oracle_deranged")
    plain, _ = model_for(clone, "subword_mean")
    tmap = O.token_map(base_tok, merged_tok, O.read_word_map(root / "data/word_map.jsonl"))
    emb, src = model.get_input_embeddings().weight, plain.get_input_embeddings().weight
    own = [torch.allclose(emb[k], src[e]) for e, k in tmap.pairs.items()]
    assert not any(own)                                                     # no Korean word got its own row
    en = np.array(question_scores(model, merged_tok, root, "en"))
    ko = np.array(question_scores(model, merged_tok, root, "ko"))
    assert np.abs(ko - en).max() > 0.05          # a random model: scores differ by tenths
    assert O.derangement(5, 0) != list(range(5)) and all(i != p for i, p in enumerate(O.derangement(50, 3)))


def test_controls_are_saved_and_named(clone, tmp_path):
    root, base_tok, merged_tok = clone
    torch.manual_seed(0)
    base = new_model(BaseModelSpec.micro(), len(base_tok)).eval()
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def load():
        m = new_model(BaseModelSpec.micro(), len(base_tok)).eval()
        m.load_state_dict(state)
        return m
    rows = O.save_controls(load, base_tok, merged_tok, ["oracle", "oracle_deranged", "oracle@0.25"],
                           root / "data/word_map.jsonl", tmp_path / "controls",
                           save=lambda m, d: M.save_model(m, merged_tok, d, overwrite=True))
    assert [r["name"] for r in rows] == ["oracle", "oracle_deranged", "oracle-alpha-0.25"]
    assert [(r["alpha"], r["deranged"]) for r in rows] == [(1.0, False), (1.0, True), (0.25, False)]
    for r in rows:
        assert (tmp_path / "controls" / r["path"] / "config.json").exists()
    assert (tmp_path / "controls/controls.json").exists()
    with pytest.raises(ValueError, match="'oracle@2'"):
        O.parse_control("oracle@2")
    with pytest.raises(ValueError, match="'copy'"):
        O.save_controls(load, base_tok, merged_tok, ["copy"], root / "data/word_map.jsonl", tmp_path / "c2",
                        save=lambda m, d: None)
    with pytest.raises(FileNotFoundError, match="word map"):
        O.read_word_map(tmp_path / "nothing.jsonl")


def test_transfer_ratio_arithmetic():
    assert transfer_ratio(0.85, 0.55, 0.25) == pytest.approx(0.5)
    assert transfer_ratio(0.85, 0.85, 0.25) == pytest.approx(1.0)
    assert transfer_ratio(0.85, 0.25, 0.25) == 0.0
    assert math.isnan(transfer_ratio(0.25, 0.5, 0.25))                   # English at chance: undefined
    # 8 items, 4 options: English 6/8 right, Korean 4/8 -> (0.5 - 0.25) / (0.75 - 0.25) = 0.5
    items = [Item(i, 0, 0 if i < 6 else 1, 0 if i < 4 else 2) for i in range(8)]
    m = paired_metrics(items, n_boot=200, seed=0, chance=0.25)
    assert m["transfer_ratio"] == pytest.approx(0.5) and m["chance"] == 0.25
    lo, hi = m["transfer_ratio_ci"]
    assert lo <= 0.5 <= hi
    assert "transfer_ratio" not in paired_metrics(items, n_boot=0)


def test_check_refuses_bad_calibration_params_before_any_work(tmp_path):
    """The new knobs are validated by `check` (all at once, file:line: stage.key)."""
    from lib.core import paths
    from lib.core.params import load_profile
    from lib.run.check import check_profile
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {paths.PARAMS / 'toy.yaml'}\n00_toy_world:\n  korean_style: toy\n"
                   "  heldout_relations: 0\n02_embedding_init:\n  init: oracle_wrong\n  controls: [oracle, 'oracle@1.5']\n"
                   "04_stage2_lm_head:\n  train_rows: korean\n05_stage3_pretrain:\n  code_switch_ratio: 1.2\n",
                   encoding="utf-8")
    prof = load_profile(bad)
    problems = check_profile(prof, paths.stages(), "x")
    text = "\n".join(problems)
    for frag in ("bad.yaml:4: 00_toy_world.heldout_relations: must be >= 1",
                 "bad.yaml:6: 02_embedding_init.init: must be one of subword_mean, mean, random, oracle, oracle_deranged",
                 "bad.yaml:7: 02_embedding_init.controls: controls: 'oracle@1.5': alpha must be in [0, 1]",
                 "bad.yaml:9: 04_stage2_lm_head.train_rows: must be one of all, new",
                 "bad.yaml:11: 05_stage3_pretrain.code_switch_ratio: must be >= 0 and <= 1"):
        assert frag in text, frag
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"extends: {paths.PARAMS / 'toy.yaml'}\n00_toy_world:\n  korean_style: toy\n", encoding="utf-8")
    assert any("need a word map" in p for p in check_profile(load_profile(ok), paths.stages(), "y"))
    assert check_profile(load_profile(paths.PARAMS / "ablations/toy_korean_toy.yaml"), paths.stages(), "z") == []
