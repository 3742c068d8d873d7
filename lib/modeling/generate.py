"""Greedy generation from rendered prompts, in batches: what 06 shows before and after tuning,
its exact-match metric and the judge's answers are made of.

    answers = greedy(model, tok, ["Question: ...\nAnswer:"], max_new_tokens=32)
"""
from __future__ import annotations

from typing import Sequence

import torch

from lib.modeling.model import pad_id_of, special_id


@torch.no_grad()
def greedy(model, tok, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers to ``prompts`` (BOS added, left-padded batches), cut at EOS, decoded without
    special tokens; the model's train/eval mode is left as it was."""
    dev = next(model.parameters()).device
    bos, eos, pad = special_id(tok, "bos"), special_id(tok, "eos"), pad_id_of(tok)
    ids = tok(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    ids = [([bos] if bos is not None else []) + x for x in ids]
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        width = max(len(x) for x in chunk)
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=dev)
        att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=dev)
        gen = model.generate(input_ids=inp, attention_mask=att, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad)
        for row in gen[:, width:].tolist():
            row = row[:row.index(eos)] if eos in row else row
            outs.append(tok.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return outs
