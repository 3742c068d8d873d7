"""Stage 3 of the method (notebook 05_stage3_pretrain): bilingual continued pretraining.

Korean and English text are packed into full blocks (no padding) and mixed by ``ko_ratio`` (0.7
as in Bllossom) with the smaller stream cycled. ``packing``: ``concat`` (a document attends to
those before it in its block, GPT-style) or ``documents`` (each document of a block attends only
to itself, with its own positions and no loss across a boundary: :mod:`lib.data.packing`).
``method``:

- ``full``: every parameter trains;
- ``lora``: LoRA adapters on the attention and MLP projections (peft), while the input embeddings
  and the LM head stay fully trainable (``modules_to_save``): the new Korean rows must learn;
- ``qlora``: the same on a 4-bit base (bitsandbytes); CUDA only, refused clearly on CPU.

Every checkpoint's ``model/`` is a plain merged ``from_pretrained`` folder (LoRA merged into a
copy), so 07/08 evaluate it like any other model; the adapter is kept beside it in ``adapter/``.

    python -m lib.train 05 params/toy.yaml      # or run notebooks/05_stage3_pretrain.ipynb
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from lib.core.io import write_text
from lib.core.readers import read_lines
from lib.data.codeswitch import code_switch, read_word_pairs
from lib.data.corpus import parse_corpus
from lib.data.packing import (MixedStream, check_packing, documents_per_row, nonpad_fraction, pack_file, pad_naive,
                               stream_stats, tokenize_lines)
from lib.modeling.model import auto_device, text_nll
from lib.train.align_terms import pretrain_with_alignment
from lib.train.common import final_model, load_start, measured, precision_of, train_spec, trainable_summary
from lib.train.head import clm_loss_fn
from lib.train.loop import train

METHODS = ("full", "lora", "qlora")


def check_method(cfg: Any) -> None:
    """Refuse a method this machine cannot run, before any heavy work."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.method == "qlora" and auto_device(cfg.get("device", "auto")).type != "cuda":
        raise RuntimeError("method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit kernels); this run is "
                           "on CPU. Use method 'lora' (same adapters, full-precision base) or 'full'.")


def qlora_device_map() -> dict:
    """Where this process puts its 4-bit model: its own GPU (``LOCAL_RANK`` under ``accelerate
    launch``), not GPU 0 for every process. Read from the environment, not from ``PartialState``,
    so it is known before any CUDA call."""
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def load_for_method(cfg: Any):
    """(model, tokenizer, folder) ready to train for ``cfg.method``."""
    if cfg.method != "qlora":
        model, tok, start = load_start(cfg)
    else:
        from peft import prepare_model_for_kbit_training  # QLoRA only; peft: ~3.5 s to import
        start = cfg.model_from(cfg.init_from)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(start, quantization_config=q, dtype=torch.bfloat16,
                                                     device_map=qlora_device_map())
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        tok = AutoTokenizer.from_pretrained(start)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model  # (Q)LoRA only; peft: ~3.5 s to import
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM",
                          modules_to_save=["embed_tokens", "lm_head"])
        model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model, tok, start


def merged_saver(cfg: Any, model, tok, start: str):
    """save_fn: a plain model folder; for LoRA, the adapter too and a merged full model."""
    sp = Path(start) / "tokenizer.model"

    def save(folder: Path) -> None:
        folder = Path(folder)
        if cfg.method == "full":
            model.save_pretrained(folder)
        else:
            model.save_pretrained(folder.parent / "adapter")
            merged = merge_adapter(cfg, model, start, folder.parent / "adapter")
            merged.save_pretrained(folder)
            del merged
        tok.save_pretrained(folder)
        if sp.exists():
            shutil.copy(sp, folder / "tokenizer.model")
    return save


def merge_adapter(cfg: Any, model, start: str, adapter_dir: Path):
    """A merged plain model. LoRA: merge into a copy; QLoRA: reload the base unquantised and merge."""
    if cfg.method == "lora":
        return copy.deepcopy(model).merge_and_unload()
    from peft import PeftModel  # (Q)LoRA only; peft: ~3.5 s to import
    # fp32, not the bf16 the 4-bit compute used: a LoRA delta of ~1e-3 of a weight is mostly below
    # half a bf16 step and would round away. (The adapter learned against the NF4-rounded weights;
    # it is merged into the unquantised ones, as peft and every QLoRA recipe do.)
    base = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def training_texts(cfg: Any) -> tuple[Any, Any, dict | None]:
    """The Korean and English corpora to pack (:func:`lib.data.corpus.parse_corpus`: text or JSONL
    files, Hub splits). With ``code_switch_ratio > 0`` both are first code-switched through
    ``word_pairs`` (lib.data.codeswitch) into ``<stage>/code_switched/``: text files only."""
    ko, en = parse_corpus(cfg.ko_text, cfg.run_dir), parse_corpus(cfg.en_text, cfg.run_dir)
    if not cfg.code_switch_ratio:
        return ko, en, None
    for key, src in (("ko_text", ko), ("en_text", en)):
        if src.kind != "text":
            raise ValueError(f"code_switch_ratio > 0 rewrites text files line by line; {key} is "
                             f"{src.describe()}: give a text file or set code_switch_ratio: 0")
    ko, en = ko.path, en.path
    pairs = read_word_pairs(cfg.path(cfg.word_pairs))
    out, stats = Path(cfg.stage_dir) / "code_switched", {}
    for lang, src in (("ko", ko), ("en", en)):
        lines, stats[lang] = code_switch(read_lines(src), pairs, cfg.code_switch_ratio, seed=cfg.seed)
        write_text(out / f"{lang}.txt", "".join(line + "\n" for line in lines))
    return out / "ko.txt", out / "en.txt", stats


def packing_comparison(tok, lines: list[str], block_size: int) -> dict:
    """Non-pad share of our packed blocks vs one-line-per-row padding on the same text."""
    docs = tokenize_lines(tok, lines)
    return {"packed": 1.0, "naive_padding": nonpad_fraction(pad_naive(docs, block_size))}


def run(cfg: Any) -> dict:
    check_method(cfg)
    check_packing(cfg.packing)
    model, tok, start = load_for_method(cfg)
    ko_eval = read_lines(cfg.path(cfg.heldout_ko), limit=cfg.max_eval_lines)
    en_eval = read_lines(cfg.path(cfg.heldout_en), limit=cfg.max_eval_lines)
    ko_file, en_file, switched = training_texts(cfg)
    ko_blocks, ko_rep = pack_file(tok, ko_file, cfg.block_size)
    en_blocks, en_rep = pack_file(tok, en_file, cfg.block_size)
    ratios = {"ko": cfg.ko_ratio, "en": 1.0 - cfg.ko_ratio}
    sources = {k: v for k, v in (("ko", ko_blocks), ("en", en_blocks)) if ratios[k] > 0}
    documents = cfg.packing == "documents"       # BOS starts a document; BOS is then no target
    stream = MixedStream(sources, {k: ratios[k] for k in sources}, batch_size=cfg.batch_size,
                         grad_accum=cfg.grad_accum, seed=cfg.seed,
                         bos_token_id=tok.bos_token_id if documents else None, packing=cfg.packing)
    spec = train_spec(cfg)
    n_eval = min(len(ko_eval), cfg.eval_lines_during)

    def eval_fn() -> dict:
        return {"ko_ppl": text_nll(model, tok, ko_eval[:n_eval], cfg.block_size)["ppl"],
                "en_ppl": text_nll(model, tok, en_eval[:n_eval], cfg.block_size)["ppl"]}

    with measured(cfg):                       # the precision of training and of its evaluations
        before = {"ko": text_nll(model, tok, ko_eval, cfg.block_size), "en": text_nll(model, tok, en_eval, cfg.block_size)}
        # the step-0 evaluation's numbers, measured before training: they must be equal (a check on
        # the precision the loop evaluates in; accelerate's prepare changed it silently once)
        eval_before = eval_fn()
    sample = stream.batch(0)
    t0 = time.time()
    loss_fn = partial(clm_loss_fn, chunk_tokens=cfg.loss_chunk_tokens)
    modules, batch_at, tokens_in, aligned = [model], stream.batch, None, None
    if cfg.align_weight > 0:               # keep stage 1's contrastive term (lib.train.align_terms)
        modules, batch_at, loss_fn, aligned = pretrain_with_alignment(cfg, model, tok, stream)
        tokens_in = lambda b: int(b["clm"]["attention_mask"].sum())  # noqa: E731
    result = train(modules, batch_at, loss_fn, spec, cfg.stage_dir, eval_fn=eval_fn,
                   save_fn=merged_saver(cfg, model, tok, start),
                   tokens_in=tokens_in or (lambda b: int(b["attention_mask"].sum())),
                   desc=f"05 pretrain ({cfg.method})")
    seconds = time.time() - t0
    with measured(cfg):
        after = {"ko": text_nll(model, tok, ko_eval, cfg.block_size), "en": text_nll(model, tok, en_eval, cfg.block_size)}
    final_model(cfg, result)
    losses = [h for h in result["history"] if "loss" in h]
    evals = result["evals"]
    return {
        "init_from": start, "method": cfg.method, "ko_ratio": cfg.ko_ratio, "precision": precision_of(cfg),
        **trainable_summary(model),
        "code_switch_ratio": cfg.code_switch_ratio, "code_switched": switched,
        "align_weight": cfg.align_weight, "alignment": aligned,
        "ko_ppl": {"before": before["ko"]["ppl"], "after": after["ko"]["ppl"]},
        "en_ppl": {"before": before["en"]["ppl"], "after": after["en"]["ppl"]},
        "ko_bits_per_char": {"before": before["ko"]["bits_per_char"], "after": after["ko"]["bits_per_char"]},
        "en_bits_per_char": {"before": before["en"]["bits_per_char"], "after": after["en"]["bits_per_char"]},
        "eval_before_training": eval_before,
        "loss": {"first": losses[0]["loss"], "last": losses[-1]["loss"]},
        "nonpad_fraction": nonpad_fraction(sample),
        "packing_vs_naive": packing_comparison(tok, ko_eval + en_eval, cfg.block_size),
        "packing": {"ko": ko_rep, "en": en_rep}, "stream": stream_stats(stream, spec.steps),
        "packing_mode": cfg.packing, "documents_per_block": documents_per_row(sample["input_ids"], tok.bos_token_id),
        "curves": {"step": [h["step"] for h in losses], "loss": [h["loss"] for h in losses],
                   **({"info_nce": [h.get("info_nce") for h in losses]} if aligned else {}),
                   "lr": [h["lr"] for h in losses],
                   "eval_step": [e["step"] for e in evals], "eval_ko_ppl": [e["eval"]["ko_ppl"] for e in evals],
                   "eval_en_ppl": [e["eval"]["en_ppl"] for e in evals]},
        "train_seconds": seconds, "tokens_per_second": result["tokens_per_second"],
        "checkpoints": result["checkpoints"], "resumed_from": result["resumed_from"],
        "model_dir": str(Path(cfg.stage_dir) / "model"),
    }
