"""Stages 04 (LM head only) and 05 (bilingual pretraining) on a tiny random Llama."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from transformers import AutoModelForCausalLM

from lib.core.params import notebook_params
from lib.core.stage import resolve


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def make_cfg(stage, tmp_path, assets, **overrides):
    ns = {k: p.default for k, p in notebook_params(stage).items()}
    ko = tmp_path / "ko.txt"
    en = tmp_path / "en.txt"
    ko.write_text("\n".join(KO_LINES * 3) + "\n", encoding="utf-8")
    en.write_text("\n".join(EN_LINES * 2) + "\n", encoding="utf-8")
    ns.update(run=str(tmp_path / "run"), init_from=str(assets["model"]), heldout_ko=str(assets["sample_ko"]),
              heldout_en=str(assets["sample_en"]), block_size=32, batch_size=8, steps=12, warmup_steps=2,
              save_every=6, report_to="none", max_eval_lines=20)
    if stage.startswith("04"):
        ns.update(text=str(ko), lr=1e-2)
    else:
        ns.update(ko_text=str(ko), en_text=str(en), lr=1e-2, eval_every=6, eval_lines_during=10)
    ns.update(overrides)
    return resolve(stage, ns)


@pytest.mark.slow
@pytest.mark.parametrize("new_rows", [False, True])
def test_head_only_training_leaves_everything_else_bit_identical(tmp_path, tiny_assets, new_rows):
    from lib.train import head
    start = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict()
    n_base = 200
    cfg = make_cfg("04_stage2_lm_head", tmp_path, tiny_assets, train_new_embeddings=new_rows,
                   base_vocab_size=n_base)
    m = head.run(cfg)
    assert m["loss"]["last"] < m["loss"]["first"]
    assert m["ko_ppl"]["after"] < m["ko_ppl"]["before"]
    assert [c.split("/")[-1] for c in m["checkpoints"]] == ["step-000006", "step-000012"]
    after = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model").state_dict()
    for k, v in start.items():
        if k == "lm_head.weight":
            assert not torch.equal(v, after[k])
        elif k == "model.embed_tokens.weight" and new_rows:
            assert torch.equal(v[:n_base], after[k][:n_base])
            assert not torch.equal(v[n_base:], after[k][n_base:])
        else:
            assert torch.equal(v, after[k]), k


def test_tied_head_is_refused_clearly(tiny_assets):
    from lib.train.head import freeze_all_but_head
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], tie_word_embeddings=True)
    with pytest.raises(ValueError, match="ties its LM head"):
        freeze_all_but_head(model)


@pytest.mark.slow
def test_pretrain_full_mixes_languages_and_loss_falls(tmp_path, tiny_assets):
    from lib.train import pretrain
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets)
    m = pretrain.run(cfg)
    assert m["loss"]["last"] < 0.85 * m["loss"]["first"]
    assert m["nonpad_fraction"] == 1.0 and m["packing_vs_naive"]["naive_padding"] < 0.99
    assert m["stream"]["sources"]["ko"]["realised_ratio"] == pytest.approx(0.7, abs=0.05)
    assert len(m["curves"]["eval_step"]) == 3          # start, step 6, step 12
    assert m["params_trainable"] == m["params_total"]


@pytest.mark.slow
def test_pretrain_lora_keeps_embeddings_trainable_and_saves_plain_model(tmp_path, tiny_assets):
    from lib.train import pretrain
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets, method="lora", lora_r=4, lora_alpha=8)
    m = pretrain.run(cfg)
    assert 0 < m["trainable_share"] < 1
    assert m["loss"]["last"] < m["loss"]["first"]
    out = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model")      # plain, merged
    assert not any("lora" in k for k in out.state_dict())
    start = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).state_dict()
    assert not torch.equal(out.state_dict()["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert not torch.equal(out.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           start["model.layers.0.self_attn.q_proj.weight"])
    assert (cfg.stage_dir / "checkpoints" / "step-000012" / "adapter" / "adapter_config.json").exists()


def test_qlora_on_cpu_is_refused_before_any_work(tmp_path, tiny_assets):
    from lib.train import pretrain
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets, method="qlora")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        pretrain.run(cfg)
    assert not (cfg.stage_dir / "checkpoints").exists()


@pytest.mark.slow
def test_new_head_rows_only_keep_english_logits_bit_identical(tmp_path, tiny_assets):
    """train_rows: new trains the Korean output rows alone: base-vocab logits of English text are
    bit-identical after training, while Korean rows (and so Korean perplexity) change."""
    from transformers import AutoTokenizer

    import lib.modeling.model as M
    from lib.train import head
    n_base = 200
    start = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    probe = M.english_probe(tok, EN_LINES[:6])
    before = M.logits_for(start, probe)
    cfg = make_cfg("04_stage2_lm_head", tmp_path, tiny_assets, train_rows="new", base_vocab_size=n_base)
    m = head.run(cfg)
    assert m["train_rows"] == "new" and m["loss"]["last"] < m["loss"]["first"]
    after_model = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model").eval()
    assert torch.equal(M.logits_for(after_model, probe)[..., :n_base], before[..., :n_base])
    w0, w1 = start.lm_head.weight, after_model.lm_head.weight
    assert torch.equal(w0[:n_base], w1[:n_base]) and not torch.equal(w0[n_base:], w1[n_base:])
    with pytest.raises(ValueError, match="train_rows must be one of"):
        head.run(make_cfg("04_stage2_lm_head", tmp_path, tiny_assets, train_rows="korean", run=str(tmp_path / "run2")))


@pytest.mark.slow
def test_pretrain_packs_code_switched_text(tmp_path, tiny_assets):
    from lib.train import pretrain
    pairs = tmp_path / "pairs.jsonl"
    words = [ln.split()[0].strip(".?,") for ln in EN_LINES[:4]]
    kos = [ln.split()[0].strip(".?,") for ln in KO_LINES[:4]]
    pairs.write_text("".join(json.dumps({"en": e, "ko": k}, ensure_ascii=False) + "\n"
                             for e, k in zip(words, kos) if e and k), encoding="utf-8")
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets, code_switch_ratio=1.0, word_pairs=str(pairs),
                   steps=4, save_every=0, eval_every=0)
    m = pretrain.run(cfg)
    assert m["code_switch_ratio"] == 1.0 and m["code_switched"]["en"]["switched"] > 0
    switched = (cfg.stage_dir / "code_switched/en.txt").read_text(encoding="utf-8")
    assert m["packing"]["en"]["path"].endswith("code_switched/en.txt") and any(k in switched for k in kos if k)
