"""Stage 02 (notebook 02_embedding_init): resize the base model to 01's merged vocabulary,
initialise the new rows (:mod:`lib.vocab.resize`, or an oracle init), check that English is
untouched and that the saved model reloads the same, and save 02's oracle controls for 07.

    metrics = run(cfg)            # cfg: lib.core.stage.resolve("02_embedding_init", ...)
"""
from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer

from lib.core.readers import read_lines
from lib.modeling import model as M
from lib.vocab import oracle as O


def run(cfg: Any) -> dict:
    """Resize, initialise, check, save ``model/`` and ``controls/``; returns 02's metrics."""
    model, base_tok = M.load_model(cfg.source(cfg.base_model), device=cfg.device)
    tok_dir = cfg.input_dir("01_vocab_merge") / "tokenizer"
    merged_tok = AutoTokenizer.from_pretrained(tok_dir)
    ko_lines = read_lines(cfg.path(cfg.sample_ko), limit=cfg.max_sample_lines)
    en_lines = read_lines(cfg.path(cfg.sample_en), limit=cfg.max_sample_lines)

    def nll(tok) -> dict:
        return {"en": M.text_nll(model, tok, en_lines, cfg.max_len), "ko": M.text_nll(model, tok, ko_lines, cfg.max_len)}

    before = nll(base_tok)
    probe = M.english_probe(base_tok, en_lines[:16], cfg.max_len)
    logits_before = M.logits_for(model, probe)
    info = O.initialise(model, base_tok, merged_tok, cfg.init, cfg.oracle_alpha,
                        cfg.path(cfg.word_map) if cfg.init in O.ORACLE_INITS else None, seed=cfg.seed)
    after = nll(merged_tok)
    # base rows untouched: English ids give bit-identical logits over the original vocabulary
    logit_diff = (M.logits_for(model, probe)[..., :info["base_vocab"]] - logits_before).abs().max().item()

    def save(m, folder):
        return M.save_model(m, merged_tok, folder, sp_model=tok_dir / "tokenizer.model", overwrite=True)

    out = save(model, cfg.stage_dir / "model")
    reloaded, _ = M.load_model(str(out), device=cfg.device)
    ko_probe = M.english_probe(merged_tok, ko_lines[:8], cfg.max_len)
    reload_diff = (M.logits_for(reloaded, ko_probe) - M.logits_for(model, ko_probe)).abs().max().item()
    controls, image_rate, mapped = [], None, None
    if cfg.controls or cfg.init in O.ORACLE_INITS:
        tmap = O.token_map(base_tok, merged_tok, O.read_word_map(cfg.path(cfg.word_map)))
        image_rate = O.image_rate(tmap, base_tok, merged_tok, en_lines, ko_lines)
        mapped = {"tokens": len(tmap.pairs), "word_pairs": tmap.words}
        controls = O.save_controls(lambda: M.load_model(cfg.source(cfg.base_model), device=cfg.device)[0],
                                   base_tok, merged_tok, cfg.controls, cfg.path(cfg.word_map),
                                   cfg.stage_dir / "controls", seed=cfg.seed, save=save)
    both = lambda k: {"before": before["en"][k], "after": after["en"][k]}  # noqa: E731
    both_ko = lambda k: {"before": before["ko"][k], "after": after["ko"][k]}  # noqa: E731
    return {"init": cfg.init, "base_vocab_size": info["base_vocab"], "merged_vocab_size": info["new_vocab"],
            "added_rows": info["added_rows"], "tied": info["tied"], "init_info": info,
            "en_ppl": both("ppl"), "ko_ppl": both_ko("ppl"),
            "en_bits_per_char": both("bits_per_char"), "ko_bits_per_char": both_ko("bits_per_char"),
            "embed_norm": {"old": info.get("embed_norm_old"), "new": info.get("embed_norm_new")},
            "head_norm": {"old": info.get("head_norm_old"), "new": info.get("head_norm_new")},
            "en_logit_max_abs_diff": logit_diff, "reload_logit_max_abs_diff": reload_diff,
            "controls": controls, "oracle_image_rate": image_rate, "oracle_mapped": mapped}
