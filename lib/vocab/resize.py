"""Stage 02's core: grow the input embeddings and the LM head to the merged vocabulary and give the
new rows a starting point; base rows stay bit-identical.

    info = resize_and_init(model, base_tok, merged_tok, init="subword_mean")
"""
from __future__ import annotations

import torch

INIT_METHODS = ("subword_mean", "mean", "random")


def _decomposition(piece: str, base_tok) -> list[int]:
    """Base-vocab ids of a new piece, split with the base model itself (not ``tok(text)``,
    which would add BOS and re-normalise)."""
    return [t.id for t in base_tok.backend_tokenizer.model.tokenize(piece)]


def _new_rows(weight: torch.Tensor, n_base: int, new_pieces: list[str], base_tok, init: str,
              generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Rows for the new pieces from the base rows ``weight[:n_base]``; returns (rows, fallbacks)."""
    base = weight[:n_base].float()
    mean = base.mean(0)
    if init == "mean":
        return mean.expand(len(new_pieces), -1).clone(), 0
    if init == "random":
        std = base.std().item()
        return torch.randn(len(new_pieces), base.shape[1], generator=generator) * std + mean, 0
    rows, fallbacks = [], 0
    unk = base_tok.unk_token_id
    for piece in new_pieces:
        ids = [i for i in _decomposition(piece, base_tok) if i != unk and i < n_base]
        if ids:
            rows.append(base[ids].mean(0))
        else:                                   # nothing to average (no byte fallback): use the mean
            rows.append(mean)
            fallbacks += 1
    return torch.stack(rows), fallbacks


@torch.no_grad()
def resize_and_init(model, base_tok, merged_tok, init: str = "subword_mean", seed: int = 0) -> dict:
    """Grow input embeddings and LM head to the merged vocab and initialise the new rows.

    Base rows stay bit-identical. With an untied head the output rows get the same treatment.
    Returns sizes, the init used, and mean row norms of old vs new rows.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    n_base = model.get_input_embeddings().weight.shape[0]
    if n_base != len(base_tok):
        raise ValueError(f"the checkpoint has {n_base} embedding rows but its tokenizer has "
                         f"{len(base_tok)} tokens: this vocab does not match the checkpoint")
    n_new = len(merged_tok)
    for i in range(min(n_base, 64)):           # cheap sanity check that the merge kept base ids
        if merged_tok.convert_ids_to_tokens(i) != base_tok.convert_ids_to_tokens(i):
            raise ValueError(f"merged tokenizer id {i} is {merged_tok.convert_ids_to_tokens(i)!r} "
                             f"but the base has {base_tok.convert_ids_to_tokens(i)!r}: not a merge "
                             "of this base tokenizer")
    if n_new < n_base:
        raise ValueError(f"merged vocab ({n_new}) is smaller than the model's ({n_base})")
    new_pieces = merged_tok.convert_ids_to_tokens(list(range(n_base, n_new)))
    gen = torch.Generator().manual_seed(seed)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.resize_token_embeddings(n_new, mean_resizing=False)
    info = {"base_vocab": n_base, "new_vocab": n_new, "added_rows": n_new - n_base, "init": init,
            "tied": tied}
    if n_new == n_base:
        return info
    emb = model.get_input_embeddings().weight
    rows, info["init_fallbacks"] = _new_rows(emb, n_base, new_pieces, base_tok, init, gen)
    emb[n_base:] = rows.to(emb.dtype)
    info["embed_norm_old"] = emb[:n_base].float().norm(dim=1).mean().item()
    info["embed_norm_new"] = emb[n_base:].float().norm(dim=1).mean().item()
    if not tied:
        head = model.get_output_embeddings().weight
        rows, _ = _new_rows(head, n_base, new_pieces, base_tok, init, gen)
        head[n_base:] = rows.to(head.dtype)
        info["head_norm_old"] = head[:n_base].float().norm(dim=1).mean().item()
        info["head_norm_new"] = head[n_base:].float().norm(dim=1).mean().item()
    return info
