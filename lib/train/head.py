"""Stage 2 of the method (notebook 04_stage2_lm_head): train the LM head alone on Korean.

Everything else is frozen, so the representation that stage 1 aligned is left as it is and the
head learns to read Korean out of it. ``train_new_embeddings=True`` also trains the *new* input
rows (ids >= the base vocab) while the base rows stay bit-identical (their gradient is zeroed and
AdamW without weight decay then leaves them exactly unchanged). ``train_rows: new`` does the same
to the head itself: only the new (Korean) output rows learn, so the logits of every base-vocab
token, English text's included, stay bit-identical.

    python -m lib.train 04 params/toy.yaml      # or run notebooks/04_stage2_lm_head.ipynb
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lib.core.io import read_json
from lib.core.readers import read_lines
from lib.data.corpus import parse_corpus
from lib.data.packing import MixedStream, pack_file, stream_stats
from lib.modeling.chunked_ce import DEFAULT_CHUNK_TOKENS, mean_nll, token_nll
from lib.modeling.model import text_nll
from lib.train.common import final_model, load_start, measured, precision_of, saver, train_spec, trainable_summary
from lib.train.loop import train

TRAIN_ROWS = ("all", "new")


def base_vocab_size(cfg: Any) -> int:
    """Rows below this id are the base model's: from the parameter, else from 01's metrics."""
    if cfg.get("base_vocab_size"):
        return int(cfg["base_vocab_size"])
    m = cfg.run_dir / "01_vocab_merge" / "metrics.json"
    if not m.exists():
        raise FileNotFoundError(f"train_new_embeddings / train_rows: new need the base vocab size: set base_vocab_size, "
                                f"or run 01_vocab_merge in this run ({m} is missing)")
    return int(read_json(m)["base_vocab_size"])


def _rows_from(weight: torch.Tensor, first: int) -> None:
    """Zero the gradient of the rows below ``first`` (they then never move under AdamW without
    weight decay)."""
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[first:] = 1
    weight.register_hook(lambda g: g * keep)


def freeze_all_but_head(model, train_new_rows_from: int | None = None, head_rows_from: int | None = None) -> None:
    """requires_grad only on the LM head (optionally only its rows >= ``head_rows_from``) and,
    optionally, the input rows >= ``train_new_rows_from``."""
    if getattr(model.config, "tie_word_embeddings", False):
        raise ValueError("this model ties its LM head to the input embeddings, so the head cannot be "
                         "trained alone; untie it first (tie_word_embeddings=False) or skip stage 04")
    model.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    if head_rows_from is not None:
        _rows_from(head, head_rows_from)
    if train_new_rows_from is not None:
        emb = model.get_input_embeddings().weight
        emb.requires_grad_(True)
        _rows_from(emb, train_new_rows_from)


def clm_loss_fn(mods, batch, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """The loop's loss for 04, 05 and 06: HF's causal-LM loss (mean over labels != -100), computed
    by :func:`lib.modeling.chunked_ce.token_nll` without the full logits (``chunk_tokens=0``: with)."""
    nll, valid = token_nll(mods[0], batch, chunk_tokens, grad_in_forward=True)
    return mean_nll(nll, valid), {}


def perplexities(model, tok, ko_lines: list[str], en_lines: list[str], max_len: int) -> dict:
    return {"ko": text_nll(model, tok, ko_lines, max_len), "en": text_nll(model, tok, en_lines, max_len)}


def run(cfg: Any) -> dict:
    if cfg.train_rows not in TRAIN_ROWS:
        raise ValueError(f"train_rows must be one of {TRAIN_ROWS}, got {cfg.train_rows!r}")
    if (cfg.train_rows == "new" or cfg.train_new_embeddings) and cfg.get("weight_decay", 0):
        raise ValueError("train_rows: new / train_new_embeddings keep base rows frozen through a zero "
                         "gradient, which weight decay would still shrink: set weight_decay: 0")
    model, tok, start = load_start(cfg)
    needs_base = cfg.train_new_embeddings or cfg.train_rows == "new"
    n_base = base_vocab_size(cfg) if needs_base else None
    freeze_all_but_head(model, n_base if cfg.train_new_embeddings else None,
                        n_base if cfg.train_rows == "new" else None)
    ko_eval = read_lines(cfg.path(cfg.heldout_ko), limit=cfg.max_eval_lines)
    en_eval = read_lines(cfg.path(cfg.heldout_en), limit=cfg.max_eval_lines)
    blocks, report = pack_file(tok, parse_corpus(cfg.text, cfg.run_dir), cfg.block_size)
    stream = MixedStream({"ko": blocks}, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed)
    spec = train_spec(cfg)
    with measured(cfg):                       # before and after in the precision it trains in
        before = perplexities(model, tok, ko_eval, en_eval, cfg.block_size)
    t0 = time.time()
    loss_fn = partial(clm_loss_fn, chunk_tokens=cfg.loss_chunk_tokens)
    result = train([model], stream.batch, loss_fn, spec, cfg.stage_dir, save_fn=saver(model, tok, start),
                   tokens_in=lambda b: int(b["attention_mask"].sum()), desc="04 LM head")
    seconds = time.time() - t0
    with measured(cfg):
        after = perplexities(model, tok, ko_eval, en_eval, cfg.block_size)
    final_model(cfg, result)
    losses = [h for h in result["history"] if "loss" in h]
    return {
        "init_from": start, "train_new_embeddings": cfg.train_new_embeddings, "train_rows": cfg.train_rows,
        "base_vocab_size": n_base, "precision": precision_of(cfg),
        **trainable_summary(model),
        "ko_ppl": {"before": before["ko"]["ppl"], "after": after["ko"]["ppl"]},
        "en_ppl": {"before": before["en"]["ppl"], "after": after["en"]["ppl"]},
        "ko_bits_per_char": {"before": before["ko"]["bits_per_char"], "after": after["ko"]["bits_per_char"]},
        "en_bits_per_char": {"before": before["en"]["bits_per_char"], "after": after["en"]["bits_per_char"]},
        "loss": {"first": losses[0]["loss"], "last": losses[-1]["loss"]},
        "curves": {"step": [h["step"] for h in losses], "loss": [h["loss"] for h in losses]},
        "packing": report, "stream": stream_stats(stream, spec.steps),
        "train_seconds": seconds, "tokens_per_second": result["tokens_per_second"],
        "checkpoints": result["checkpoints"], "resumed_from": result["resumed_from"],
        "model_dir": str(Path(cfg.stage_dir) / "model"),
    }
