"""The value rules of ``check``: per parameter name, what a value must be (finite, in range, one of
a stage's own values, accepted by a stage's own validator). Each rule returns None or the
problem in words; the stages' constants are read at check time."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from lib.data.corpus import check_block_size
from lib.data.packing import PACKING_MODES
from lib.eval import extratasks, rules
from lib.modeling import model, represent
from lib.modeling.model import cuda_missing_message
from lib.data import parallel
from lib.train import align_terms, chatvector, contrastive, dpo, head, pretrain, retention, sft
from lib.train.loop import TrainSpec
from lib.vocab import merge, oracle
from lib.world import basemodel, clone


def one_of(allowed: Callable[[], Sequence[Any]]) -> Callable[[Any], str | None]:
    """A rule: the value must be one of a stage's own values, read at check time (``allowed()``),
    so values a stage adds later are accepted without touching this file."""
    def rule(value: Any) -> str | None:
        ok = tuple(allowed())
        return None if value in ok else f"must be one of {', '.join(map(str, ok))}, got {value!r}"
    return rule


def raises(fn: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """A rule from a stage's own validator: its ValueError message is the problem."""
    def rule(value: Any) -> str | None:
        try:
            fn(value)
        except ValueError as e:
            return str(e)
        return None
    return rule


def in_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        bad = ((lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if not bad:
            return None
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        return f"must be {' and '.join(s for s in (left, right) if s)}, got {value!r}"
    return rule


def device_problem(value: Any) -> str | None:
    if value == "auto":
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        return f"must be auto, cpu, cuda or cuda:N, got {value!r}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"is {value!r}, but torch sees no GPU: {cuda_missing_message(str(value)).split(': ', 1)[1]}"
    return None


def train_spec_field(field: str) -> Callable[[Any], str | None]:
    """A rule from the training loop's own TrainSpec validation of one field."""
    def build(value: Any) -> None:
        TrainSpec(**{"steps": 1, field: value})
    return raises(build)


AT_LEAST_1 = in_range(1)
NON_NEGATIVE = in_range(0)
POSITIVE = in_range(0, lo_open=True)
SHARE = in_range(0, 1)

KEY_RULES: dict[str, Callable[[Any], str | None]] = {
    "contamination_ngram": lambda v: None if v == 0 or (isinstance(v, int) and v >= 2) else
    f"must be 0 (no scan) or 2 or more words, got {v!r}",
    "device": device_problem,
    "precision": one_of(lambda: model.PRECISIONS),
    "init": one_of(lambda: oracle.all_inits()),
    "controls": raises(lambda v: oracle.check_controls(v)),
    "oracle_alpha": in_range(0, 1),
    "korean_style": one_of(lambda: clone.STYLES),
    "korean_model_type": one_of(lambda: basemodel.KOREAN_MODEL_TYPES),
    "joint_korean_share": in_range(0, 1, hi_open=True),
    "heldout_relations": in_range(1),
    "ko_paraphrases": in_range(1, 5), "en_paraphrases": in_range(1, 5), "bridge_paraphrases": in_range(1, 5),
    "train_rows": one_of(lambda: head.TRAIN_ROWS),
    "objective": one_of(lambda: align_terms.OBJECTIVES),
    "layers": raises(lambda v: align_terms.check_layers(v)),
    "code_switch_ratio": in_range(0, 1),
    "merge_mode": one_of(lambda: merge.MERGE_MODES),
    "pooling": one_of(lambda: represent.POOLING_MODES),
    "english_encoder": one_of(lambda: contrastive.ENGLISH_ENCODERS),
    "method": one_of(lambda: pretrain.METHODS),
    "packing": one_of(lambda: PACKING_MODES),
    "chat_vector_when": one_of(lambda: sft.CHAT_VECTOR_WHEN),
    "chat_vector_rows": one_of(lambda: chatvector.ROWS_POLICIES),
    "dpo_method": one_of(lambda: dpo.DPO_METHODS),
    "freeze": lambda v: next((why for _, why in retention.retention_problems({"freeze": v})), None),
    "interpolate": in_range(0, 1),
    "parallel_share": in_range(0, 1, hi_open=True),
    "parallel_mode": one_of(lambda: parallel.MODES),
    "dpo_beta": in_range(0, lo_open=True), "dpo_lr": in_range(0, lo_open=True), "dpo_heldout": in_range(0, 1, hi_open=True),
    "dpo_batch_size": in_range(1), "dpo_grad_accum": in_range(1), "dpo_steps": in_range(1),
    "prediction": raises(rules.check_rule),
    "extra_tasks": raises(lambda v: extratasks.check(v)),
    "extra_metric": raises(lambda v: extratasks.check_metrics(v)),
    "schedule": train_spec_field("schedule"),
    "report_to": train_spec_field("report_to"),
    "steps": train_spec_field("steps"),
    "grad_accum": train_spec_field("grad_accum"),
    "block_size": raises(check_block_size),
    "lr": POSITIVE, "layer_weights_lr": POSITIVE, "temperature": POSITIVE, "align_temperature": POSITIVE, "lora_alpha": POSITIVE,
    "ko_ratio": SHARE, "ko_share": SHARE, "min_lr_ratio": SHARE, "lora_dropout": in_range(0, 1, hi_open=True),
    "batch_size": AT_LEAST_1, "align_batch_size": in_range(2), "max_len": AT_LEAST_1, "align_max_len": AT_LEAST_1, "clm_block": AT_LEAST_1, "seq_len": AT_LEAST_1,
    "lora_r": AT_LEAST_1, "korean_vocab_size": AT_LEAST_1, "max_new_tokens": AT_LEAST_1,
    "max_models_in_grid": AT_LEAST_1, "hidden_size": AT_LEAST_1, "intermediate_size": AT_LEAST_1,
    "num_layers": AT_LEAST_1, "num_heads": AT_LEAST_1,
}
# counts, cadences and weights where 0 means "off" or "all"
for _k in ("warmup_steps", "save_every", "eval_every", "max_pairs", "eval_pairs", "max_sample_lines",
           "max_eval_lines", "eval_lines_during", "clm_weight", "weight_decay", "max_grad_norm",
           "group_by_length", "align_weight", "n_boot", "rep_pairs", "limit", "num_fewshot", "max_examples",
           "eval_examples", "match_examples", "umap_pairs_linked", "num_threads", "base_vocab_size", "loss_chunk_tokens",
           "qa_repeats", "model_seed", "seed", "dpo_max_pairs", "dpo_warmup_steps", "dpo_eval_every",
           "dpo_save_every", "freeze_layers"):
    KEY_RULES[_k] = NON_NEGATIVE


def value_problem(key: str, value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    rule = KEY_RULES.get(key) or (NON_NEGATIVE if key.startswith("n_") else None)
    return rule(value) if rule else None
