"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness does for ARC.

Each option is scored as the summed log-probability of ``" " + option`` after the prompt. The
option tokens are found by tokenizing the prompt and the prompt+option and taking what follows
their common prefix, so a tokenizer that merges across the boundary cannot shift the scored span.
``acc`` takes the highest sum; ``acc_norm`` divides by the option's length in characters (as
lm-eval's ``acc_norm``), which removes the bias towards short options.

Usage::

    from lib.modeling.mcscore import score_choices, mc_accuracy
    score_choices(model, tok, "Question: Where does Minsu live?\\nAnswer:", ["Busan", "Seoul"])
    mc_accuracy(model, tok, "outputs/toy/00_toy_world/eval/knowledge_ko.jsonl", "ko")["acc"]

These are fast in-process checks for small models; 07_benchmark_eval runs the real harness.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lib.core.prompts import QA_PROMPTS

NORMALIZE = (None, "tokens", "chars")


def split_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) for scoring ``continuation`` after ``prompt``."""
    full = tokenizer(prompt + continuation)["input_ids"]
    ctx = tokenizer(prompt)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and len(ctx) > 1 and ctx[-1] == eos and full[-1] == eos:
        ctx, full = ctx[:-1], full[:-1]  # a tokenizer that appends EOS: score the option, not EOS
    k = 0
    for a, b in zip(ctx, full):
        if a != b:
            break
        k += 1
    if k == 0:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing shared with prompt+continuation; "
                         "is add_bos_token inconsistent?")
    if k == len(full):
        raise ValueError(f"continuation {continuation!r} adds no token after prompt {prompt!r}")
    return full[:k], full[k:]


@torch.inference_mode()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[list[float]]:
    """Per-token log-probabilities of each continuation given its context (right-padded batches)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float] | None] = [None] * len(pairs)
    # Similar lengths together: less padding, same results.
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, i in enumerate(idx):
            ctx, cont = pairs[i]
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)  # position t predicts token t+1
            out[i] = logp[row, pos, torch.tensor(cont)].tolist()
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def normalized(token_logps: list[float], continuation: str, normalize: str | None) -> float:
    """Sum of log-probs, optionally divided by the token count or the character count."""
    total = float(sum(token_logps))
    if normalize is None:
        return total
    if normalize == "tokens":
        return total / len(token_logps)
    if normalize == "chars":
        return total / len(continuation)
    raise ValueError(f"normalize must be one of {NORMALIZE}, not {normalize!r}")


def score_choices(model, tokenizer, prompt: str, choices: list[str], normalize: str | None = None,
                  batch_size: int = 32) -> list[float]:
    """Log-likelihood of ``" " + choice`` after ``prompt`` for each choice (higher is better).

    ``normalize``: None (summed log-prob), ``"tokens"`` (mean per token) or ``"chars"`` (per character).
    """
    conts = [" " + c for c in choices]
    pairs = [split_ids(tokenizer, prompt, c) for c in conts]
    logps = continuation_logprobs(model, pairs, batch_size)
    return [normalized(lp, c, normalize) for lp, c in zip(logps, conts)]


def read_mc(jsonl_path: str | Path) -> list[dict]:
    """ARC-shaped rows ``{id, question, choices: {text, label}, answerKey}``; bad rows name file and line."""
    rows = []
    for i, line in enumerate(Path(jsonl_path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            labels = row["choices"]["label"]
            if row["answerKey"] not in labels or len(labels) != len(row["choices"]["text"]):
                raise ValueError("answerKey not among labels, or labels and texts differ in length")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{jsonl_path}:{i}: not an ARC-shaped row ({err})") from err
        rows.append(row)
    return rows


def mc_accuracy(model, tokenizer, jsonl_path: str | Path, lang: str, batch_size: int = 64,
                limit: int | None = None) -> dict:
    """Accuracy on an ARC-shaped JSONL file with the kollm_evaluation prompt of ``lang``.

    Returns ``{"acc", "acc_norm", "n", "samples"}``; each sample holds ``id, gold, pred, pred_norm,
    loglik`` (summed, per option) so answers can be compared across languages by id.
    """
    if lang not in QA_PROMPTS:
        raise ValueError(f"lang must be one of {list(QA_PROMPTS)}, not {lang!r}")
    rows = read_mc(jsonl_path)[:limit]
    pairs, spans = [], []
    for row in rows:
        prompt = QA_PROMPTS[lang].format(q=row["question"])
        start = len(pairs)
        pairs += [split_ids(tokenizer, prompt, " " + t) for t in row["choices"]["text"]]
        spans.append((start, len(pairs)))
    logps = continuation_logprobs(model, pairs, batch_size)
    samples, hits, hits_norm = [], 0, 0
    for row, (a, b) in zip(rows, spans):
        texts = row["choices"]["text"]
        sums = [normalized(lp, "", None) for lp in logps[a:b]]
        norms = [normalized(lp, " " + t, "chars") for lp, t in zip(logps[a:b], texts)]
        labels = row["choices"]["label"]
        pred = labels[max(range(len(sums)), key=sums.__getitem__)]
        pred_norm = labels[max(range(len(norms)), key=norms.__getitem__)]
        hits += pred == row["answerKey"]
        hits_norm += pred_norm == row["answerKey"]
        samples.append({"id": row["id"], "gold": row["answerKey"], "pred": pred, "pred_norm": pred_norm,
                        "loglik": sums})
    n = len(rows)
    return {"acc": hits / n if n else 0.0, "acc_norm": hits_norm / n if n else 0.0, "n": n, "samples": samples}
