"""Stage 06 of the method (notebook 06_instruction_tuning): bilingual instruction tuning.

Alpaca-style records (``instruction``, ``input``, ``output``, optional ``history`` of
``[user, assistant]`` pairs, optional ``lang``) from JSON or JSONL files are rendered with a chat
template (default: Bllossom's Llama-2 format), and the model learns the responses only: every
prompt token and all padding get label -100. Korean and English examples are mixed per batch by
``ko_share``. ``method`` is ``full`` or ``lora`` (``qlora`` on CUDA), exactly as in stage 05:
every checkpoint's ``model/`` is a plain merged ``from_pretrained`` folder. An optional chat
vector (English ``instruct - base``, see :mod:`lib.train.chatvector`) is added to the stage's result
(``chat_vector_when: after``) or to its starting model (``before``).

    python -m lib.train 06 params/toy.yaml      # or run notebooks/06_instruction_tuning.ipynb

How a record becomes tokens (template, label mask, truncation, language detection):
:mod:`lib.data.instructions`.

Batches are a pure function of the step (:class:`InstructionStream`, built on MixedStream's
row plan), so a resumed run sees exactly the data an uninterrupted one would. ``eval_examples``
records are held out (seeded) for the answer-only loss. The metrics compare the stage's starting
model with its final ``model/``: greedy answers to a few prompts (``generations``), held-out
loss, and exact match on held-out and seen records. With a chat vector the table gains the
intermediate model: ``chat_vector_only`` (start + vector, before tuning) or ``sft_only`` (tuned,
before the vector); checkpoints never include an ``after`` vector, only ``model/`` does.

With ``dpo: true`` the tuned model (with an ``after`` vector, if any) moves to ``sft_model/`` and
DPO on preference pairs (:mod:`lib.train.dpo`, pairs from :mod:`lib.data.preferences`) trains from it
into ``dpo/checkpoints/``; its final model is ``model/``. The metrics gain ``dpo`` (held-out
reward accuracy and margins per pair kind, before and after) and a ``dpo`` column in the
generations and exact-match tables. SFT records held out above are never DPO pairs. 07 scores the
SFT model (``06_instruction_tuning-sft``, from ``sft_model/``) and the DPO model
(``06_instruction_tuning``): the rows without and with DPO (``metrics["dpo"]["rows_07"]``).
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import PartialState

from lib.core.stage import Config
from lib.data.chattemplate import jinja_template, template_check
from lib.data.instructions import (
    Example,
    Template,
    boundary_check,
    collate,
    detect_lang,
    encode,
    load_instructions,
    split_heldout,
    template_from,
)
from lib.data.packing import MixedStream
from lib.data.parallel import parallel_records, read_parallel
from lib.data.preferences import eval_questions
from lib.modeling.generate import greedy
from lib.modeling.chunked_ce import DEFAULT_CHUNK_TOKENS, token_nll
from lib.modeling.model import load_model, pad_id_of, save_model
from lib.train import dpo
from lib.train.chatvector import apply_chat_vector, load_chat_vector, summary
from lib.train.common import final_model, load_measured, measured, precision_of, train_spec, trainable_summary
from lib.train.dpo import check_dpo
from lib.train.head import clm_loss_fn
from lib.train.loop import train
from lib.train.align_terms import pretrain_with_alignment
from lib.train.pretrain import check_method, load_for_method, merged_saver
from lib.train.retention import check_retention, freeze, interpolate

CHAT_VECTOR_WHEN = ("before", "after")


# ----------------------------------------------------------------------------- mixing

def language_ratios(counts: dict[str, int], ko_share: float) -> dict[str, float]:
    """``ko`` gets ``ko_share``; other languages share the rest in proportion to their sizes.
    With Korean alone (or no Korean) ``ko_share`` has nothing to mix and is ignored."""
    if not 0.0 <= ko_share <= 1.0:
        raise ValueError(f"ko_share must be in [0, 1], got {ko_share}")
    others = {k: n for k, n in counts.items() if k != "ko"}
    if "ko" not in counts or not others:
        total = sum(counts.values())
        return {k: n / total for k, n in counts.items()}
    rest = sum(others.values())
    ratios = {"ko": ko_share, **{k: (1.0 - ko_share) * n / rest for k, n in others.items()}}
    return {k: r for k, r in ratios.items() if r > 0}


class InstructionStream:
    """Deterministic micro-batches of examples mixed by language: a pure function of the step.

    The row plan is :class:`lib.data.packing.MixedStream`'s (exact per-batch shares, each language
    cycled in a fresh seeded order per pass); rank ``r`` of ``w`` takes rows ``r::w``, padded
    to the longest of its rows.
    """

    def __init__(self, examples: Sequence[Example], ratios: dict[str, float], batch_size: int,
                 grad_accum: int, seed: int, pad_id: int):
        self.by_lang = {lang: [e for e in examples if e.lang == lang] for lang in sorted(ratios)}
        empty = [k for k, v in self.by_lang.items() if not v]
        if empty:
            raise ValueError(f"no training example in language(s) {empty}; set ko_share or languages")
        # MixedStream only needs the row count of each source: index placeholders stand in for blocks
        self.plan = MixedStream({k: torch.zeros((len(v), 2), dtype=torch.int8) for k, v in self.by_lang.items()},
                                ratios, batch_size=batch_size, grad_accum=grad_accum, seed=seed)
        self.pad_id, self.batch_size, self.grad_accum = pad_id, batch_size, grad_accum

    def examples(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> list[Example]:
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over {world} processes")
        src, idx = self.plan.plan(step, micro)
        names = self.plan.names
        return [self.by_lang[names[s]][i] for s, i in zip(src[rank::world], idx[rank::world])]

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict:
        return collate(self.examples(step, micro, rank, world), self.pad_id)

    def stats(self, steps: int) -> dict:
        rows = self.plan.rows_before(steps * self.grad_accum * self.batch_size)
        total = sum(rows.values())
        return {lang: {"examples": len(self.by_lang[lang]), "ratio": self.plan.ratios[lang],
                       "rows": rows[lang], "realised_ratio": rows[lang] / max(total, 1),
                       "epochs": rows[lang] / len(self.by_lang[lang])} for lang in self.by_lang}

    def nonpad_fraction(self, steps: int) -> float:
        """Share of real tokens in the padded batches of the first ``steps`` steps."""
        real = padded = 0
        for s in range(steps):
            for m in range(self.grad_accum):
                lens = [len(e.ids) for e in self.examples(s, m)]
                real, padded = real + sum(lens), padded + max(lens) * len(lens)
        return real / max(padded, 1)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def response_loss(model, examples: Sequence[Example], pad_id: int, batch_size: int = 16,
                  chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> dict:
    """Mean cross-entropy per answer token over ``examples``: overall and per language
    (:func:`lib.modeling.chunked_ce.token_nll`, as the training loss)."""
    dev = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        b = collate(chunk, pad_id)
        nll, valid = token_nll(model, {k: v.to(dev) for k, v in b.items()}, chunk_tokens)
        for row, e in enumerate(chunk):
            sums[e.lang] = sums.get(e.lang, 0.0) + float(nll[row].sum())
            counts[e.lang] = counts.get(e.lang, 0) + int(valid[row].sum())
    out = {"loss": sum(sums.values()) / max(sum(counts.values()), 1)}
    out.update({f"loss_{k}": sums[k] / max(counts[k], 1) for k in sorted(sums)})
    return out


def sample_requests(cfg: Any, train_records: Sequence[dict]) -> list[dict]:
    """The generation prompts: ``sample_prompts`` if given, else per language the first
    training record without input and the first with input (with their reference answers)."""
    if cfg.sample_prompts:
        return [{"lang": detect_lang(p), "instruction": p, "input": "", "reference": None}
                for p in cfg.sample_prompts]
    out = []
    for lang in cfg.languages:
        for has_input in (False, True):
            rec = next((r for r in train_records if r["lang"] == lang and bool(r["input"]) == has_input
                        and not r["history"]), None)
            if rec is not None:
                out.append({"lang": lang, "instruction": rec["instruction"], "input": rec["input"],
                            "reference": rec["output"].strip()})
    return out


def generate(model, tok, template: Template, requests: Sequence[dict], max_new_tokens: int,
             batch_size: int = 16) -> list[str]:
    """Greedy answers to instruction records rendered with ``template`` (:func:`lib.modeling.generate.greedy`)."""
    prompts = [template.generation_prompt(r["instruction"], r["input"]) for r in requests]
    return greedy(model, tok, prompts, max_new_tokens, batch_size)


def exact_match(model, tok, template: Template, records: Sequence[dict], max_new_tokens: int) -> dict:
    """Share of ``records`` whose greedy answer equals the reference (whitespace-normalised),
    overall and per language. Meaningful for short answers (the toy world's); long free-form
    answers (LIMA) almost never match exactly."""
    answers = generate(model, tok, template, records, max_new_tokens)
    norm = lambda t: " ".join(t.split())
    hits: dict[str, list[bool]] = {}
    for r, a in zip(records, answers):
        hits.setdefault(r["lang"], []).append(norm(a) == norm(r["output"]))
    out = {"all": sum(map(sum, hits.values())) / max(len(records), 1), "n": len(records)}
    out.update({k: sum(v) / len(v) for k, v in sorted(hits.items())})
    return out


def show_example(tok, ex: Example) -> str:
    """An example's tokens decoded, the learned part in ``[[...]]``: shows the label mask.

    Each run of equal mask values is cut out of the decoded prefix (not decoded alone, which
    would drop the space that SentencePiece's dummy prefix stands for)."""
    cuts = [i for i in range(1, len(ex.mask)) if ex.mask[i] != ex.mask[i - 1]] + [len(ex.ids)]
    parts, done, lo = [], "", 0
    for hi in cuts:
        text = tok.decode(ex.ids[:hi])
        piece, done = text[len(done):], text
        parts.append(f"[[{piece}]]" if ex.mask[lo] else piece)
        lo = hi
    return "".join(parts)


def generations_table(metrics: dict):
    """The generations as a pandas DataFrame (one row per prompt)."""
    import pandas as pd  # pandas: ~0.25 s to import; only the notebook's table; check reads this module
    return pd.DataFrame(metrics["generations"])


# ----------------------------------------------------------------------------- chat vector

def chat_vector_enabled(cfg: Any) -> bool:
    if bool(cfg.chat_vector_base) != bool(cfg.chat_vector_instruct):
        raise ValueError("set both chat_vector_base and chat_vector_instruct (an English base model "
                         "and its instruction-tuned version), or neither")
    if cfg.chat_vector_when not in CHAT_VECTOR_WHEN:
        raise ValueError(f"chat_vector_when must be one of {CHAT_VECTOR_WHEN}, got {cfg.chat_vector_when!r}")
    return bool(cfg.chat_vector_base)


def add_chat_vector(cfg: Any, src: str | Path, dst: str | Path) -> dict:
    """Load ``src``, add ``chat_vector_weight x (instruct - base)``, save a full folder at ``dst``."""
    vector = load_chat_vector(cfg.source(cfg.chat_vector_base), cfg.source(cfg.chat_vector_instruct))
    # fp32 whatever the device: a delta of ~1e-3 of the weight scale added to bf16 weights (the
    # inference dtype on a GPU) mostly rounds away, and the saved model would be bf16 too
    model, tok = load_model(str(src), cfg.get("device", "auto"), dtype="fp32")
    report = apply_chat_vector(model, vector, cfg.chat_vector_weight, rows=cfg.chat_vector_rows)
    del vector
    sp = Path(src) / "tokenizer.model"
    save_model(model, tok, dst, sp_model=sp if sp.exists() else None, overwrite=True)
    return report


# ----------------------------------------------------------------------------- the stage

def _on_main(fn):
    """``fn()`` on the main process only (it writes files); every process then waits for it."""
    state = PartialState()
    out = fn() if state.is_main_process else None
    state.wait_for_everyone()
    return out


def add_parallel(cfg: Any, train_recs: list[dict], held_recs: list[dict]) -> tuple[list[dict], dict | None]:
    """``train_recs`` plus the parallel records that make ``parallel_share`` of them
    (:mod:`lib.data.parallel`); never a held-out record's question nor, on the toy world, an
    evaluated one."""
    if not cfg.parallel_share:
        return train_recs, None
    exclude = {r["instruction"] for r in held_recs}
    facts = cfg.path("{toy}/eval/facts.jsonl")
    if cfg.get("base_model") == "toy" and facts.exists():   # (a unit test's toy run may have no 00)
        exclude |= eval_questions(facts)
    items = [(en, ko) for en, ko in read_parallel(cfg.path(cfg.parallel_file))
             if en["lang"] in cfg.languages and ko["lang"] in cfg.languages]
    extra, report = parallel_records(items, cfg.parallel_share, len(train_recs), cfg.seed, cfg.parallel_mode,
                                     exclude)
    return train_recs + extra, {**report, "file": str(cfg.path(cfg.parallel_file))}


def run(cfg: Any) -> dict:
    check_method(cfg)
    check_dpo(cfg)
    check_retention(cfg)
    use_cv = chat_vector_enabled(cfg)
    when = cfg.chat_vector_when if use_cv else None
    template = template_from(cfg)
    records, data_report = load_instructions([cfg.path(f) for f in cfg.data_files], cfg.languages,
                                             cfg.max_examples)
    train_recs, held_recs = (split_heldout(records, cfg.eval_examples, cfg.seed) if cfg.eval_examples
                             else (records, []))
    train_recs, parallel_report = add_parallel(cfg, train_recs, held_recs)
    start = cfg.model_from(cfg.init_from)
    run_cfg, cv_report = cfg, None
    if when == "before":         # tune the starting model plus the vector
        cv_dir = cfg.stage_dir / "start_with_chat_vector"
        cv_report = _on_main(lambda: add_chat_vector(cfg, start, cv_dir))
        run_cfg = Config(cfg)
        run_cfg["init_from"] = str(cv_dir)
    model, tok, model_start = load_for_method(run_cfg)
    frozen = freeze(model, cfg.freeze, cfg.freeze_layers) if (cfg.freeze or cfg.freeze_layers) else None
    tok.chat_template = jinja_template(template, tok)     # saved with every checkpoint and model/
    examples, enc_report = encode(tok, train_recs, template, cfg.max_len, cfg.loss_on_history)
    held, _ = encode(tok, held_recs, template, cfg.max_len, cfg.loss_on_history)
    pad = pad_id_of(tok)
    counts = {lang: n for lang in cfg.languages if (n := sum(e.lang == lang for e in examples))}
    stream = InstructionStream(examples, language_ratios(counts, cfg.ko_share), cfg.batch_size,
                               cfg.grad_accum, cfg.seed, pad)
    spec = train_spec(cfg)
    requests = sample_requests(cfg, train_recs)
    match_sets = {k: v for k, v in (("heldout", [r for r in held_recs if not r["history"]][:cfg.match_examples]),
                                    ("train", [r for r in train_recs if not r["history"]][:cfg.match_examples])) if v}

    def look(m) -> dict:
        """What the metrics record of a model: sample generations, held-out loss, exact match,
        in the precision the stage trains and evaluates in (before, after and DPO alike)."""
        with measured(cfg):
            return {"gens": generate(m, tok, template, requests, cfg.max_new_tokens),
                    "held": response_loss(m, held, pad, cfg.batch_size, cfg.loss_chunk_tokens) if held else None,
                    "match": {k: exact_match(m, tok, template, v, cfg.max_new_tokens) for k, v in match_sets.items()}}

    before = look(load_measured(cfg, start)[0] if when == "before" else model)
    with measured(cfg):
        cv_only = generate(model, tok, template, requests, cfg.max_new_tokens) if when == "before" else None
    eval_fn = (lambda: response_loss(model, held, pad, cfg.batch_size, cfg.loss_chunk_tokens)) if held else None
    t0 = time.time()
    loss_fn = partial(clm_loss_fn, chunk_tokens=cfg.loss_chunk_tokens)     # response tokens only, chunked
    modules, batch_at, tokens_in, aligned = [model], stream.batch, (lambda b: int(b["attention_mask"].sum())), None
    if cfg.align_weight > 0:    # stage 1's contrastive term kept, as 05 keeps it (lib.train.align_terms)
        modules, batch_at, loss_fn, aligned = pretrain_with_alignment(cfg, model, tok, stream)
        tokens_in = lambda b: int(b["clm"]["attention_mask"].sum())  # noqa: E731
    result = train(modules, batch_at, loss_fn, spec, cfg.stage_dir, eval_fn=eval_fn,
                   save_fn=merged_saver(run_cfg, model, tok, model_start),
                   tokens_in=tokens_in, desc=f"06 SFT ({cfg.method})")
    seconds = time.time() - t0
    trainable = trainable_summary(model)
    del model
    final_dir = cfg.stage_dir / "model"
    final_model(cfg, result)                 # the main process copies, every process waits
    sft_only = None
    if when == "after":          # generate without the vector first, then add it to model/
        with measured(cfg):
            sft_only = generate(load_measured(cfg, final_dir)[0], tok, template, requests, cfg.max_new_tokens)
        cv_report = _on_main(lambda: add_chat_vector(cfg, final_dir, final_dir))
    merged_back = None
    if cfg.interpolate < 1.0:    # post-hoc merge back toward the starting model (lib.train.retention)
        merged_back = _on_main(lambda: interpolate(start, final_dir, cfg.interpolate, cfg.get("device", "auto")))
    after = look(load_measured(cfg, final_dir)[0])
    dpo_metrics = dpo_after = None
    if cfg.dpo:                  # the tuned model becomes sft_model/ and DPO's result model/
        t_dpo = time.time()
        sft_dir = _on_main(lambda: dpo.keep_sft_model(cfg.stage_dir)) or cfg.stage_dir / "sft_model"
        out = dpo.train_dpo(cfg, sft_dir, template, exclude=[r["instruction"] for r in held_recs])
        del out["model"]
        final_model(cfg, out["result"])
        dpo_after = look(load_measured(cfg, final_dir)[0])
        dpo_metrics = {**out["metrics"], "heldout_loss": dpo_after["held"], "seconds": time.time() - t_dpo,
                       "rows_07": {"without_dpo": f"{cfg.stage}-sft", "with_dpo": cfg.stage}}

    generations = []
    for i, r in enumerate(requests):
        row = {"lang": r["lang"], "prompt": template.user_text(r["instruction"], r["input"]),
               "reference": r["reference"], "before": before["gens"][i]}
        if cv_only is not None:
            row["chat_vector_only"] = cv_only[i]
        if sft_only is not None:
            row["sft_only"] = sft_only[i]
        row["after"] = after["gens"][i]
        if dpo_after is not None:
            row["dpo"] = dpo_after["gens"][i]
        generations.append(row)
    losses = [h for h in result["history"] if "loss" in h]
    evals = result["evals"]
    lens = [len(e.ids) for e in examples]
    return {
        "init_from": start, "method": cfg.method, "precision": precision_of(cfg), **trainable,
        "data": {**data_report, **enc_report, "records": len(records), "train_examples": len(examples),
                 "heldout_examples": len(held), "by_lang": counts,
                 "mean_tokens": float(np.mean(lens)), "max_tokens": max(lens),
                 "target_share": sum(sum(e.mask) for e in examples) / max(sum(lens), 1)},
        "template": {"prompt": template.prompt, "turn": template.turn, "system": template.system,
                     "input_sep": template.input_sep, "example": template.render(train_recs[0])},
        "example_masked": show_example(tok, examples[0]),
        "boundary": boundary_check(tok, train_recs, template),
        "chat_template": template_check(tok, train_recs, template),
        "stream": stream.stats(spec.steps), "nonpad_fraction": stream.nonpad_fraction(min(spec.steps, 20)),
        "loss": {"first": losses[0]["loss"], "last": losses[-1]["loss"]},
        "heldout_loss": {"before": before["held"], "after": after["held"]},
        "curves": {"step": [h["step"] for h in losses], "loss": [h["loss"] for h in losses],
                   **({"info_nce": [h.get("info_nce") for h in losses]} if aligned else {}),
                   "lr": [h["lr"] for h in losses], "eval_step": [e["step"] for e in evals],
                   **{f"eval_{k}": [e["eval"][k] for e in evals] for k in (evals[0]["eval"] if evals else {})}},
        "generations": generations,
        "exact_match": {k: {"before": before["match"][k], "after": after["match"][k],
                            **({"dpo": dpo_after["match"][k]} if dpo_after else {})} for k in match_sets},
        "dpo": dpo_metrics,
        "retention": {"frozen": frozen, "parallel": parallel_report, "alignment": aligned,
                      "align_weight": cfg.align_weight, "interpolate": merged_back},
        "chat_vector": (None if cv_report is None else
                        {"when": when, "base": cfg.chat_vector_base, "instruct": cfg.chat_vector_instruct,
                         "weight": cfg.chat_vector_weight, **summary(cv_report), "report": cv_report}),
        "train_seconds": seconds, "tokens_per_second": result["tokens_per_second"],
        "checkpoints": result["checkpoints"], "resumed_from": result["resumed_from"],
        "model_dir": str(final_dir),
    }
