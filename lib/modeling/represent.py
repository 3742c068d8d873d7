"""Sentence vectors from a causal LM, and the Ko-En alignment metrics computed on them.

Stage 1 (``03_stage1_contrastive``) trains on these vectors; 08 and the per-layer curves measure them.

    batch = encode_batch(tok, texts, max_len=128)                  # BOS + right padding, no tokenizer edits
    vecs = sentence_vectors(model, batch, layer=-1, pooling="mean")  # [B, d], keeps the graph (training)
    ko = embed_texts(model, tok, ko_texts, layer=8)                 # [n, d] on CPU, no grad (evaluation)
    per_layer = all_layer_vectors(model, tok, ko_texts)             # [n_layers + 1, n, d]
    alignment_report(ko, en)  # {pair_cos, nonpair_cos, gap, p1_ko2en, p1_en2ko}

Layer indices are ``output_hidden_states`` indices: 0 is the embedding output, ``i`` the output of
decoder layer ``i``, and ``-1`` the last entry, which in HF Llama is *after* the final RMSNorm.
Choose one of ``layer`` (one layer), ``layer_range=(a, b)`` (fixed uniform mean over a..b inclusive)
or ``layer_weights`` (a learned :class:`LayerWeights`); none of them means the last layer.
Vectors are returned in float32 whatever the model dtype, so bf16 training keeps a precise loss.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F

POOLING_MODES = ("mean", "last")


def encode_batch(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Token ids with BOS first, right-padded with 0 and masked: ``{input_ids, attention_mask}`` [B, T].

    Llama tokenizers have no pad token; we pad by hand instead of setting one, so the tokenizer a
    caller saves later is unchanged. Pad id 0 is never seen by the model (masked and pooled out).
    """
    if isinstance(texts, str):
        raise TypeError("encode_batch expects a list of texts, got a single str")
    bos = tokenizer.bos_token_id
    rows = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    if bos is not None:
        # A tokenizer loaded without add_bos_token would silently drop BOS, and pooling assumes it.
        rows = [r if r[:1] == [bos] else ([bos] + r)[:max_len] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean",
         exclude_bos: bool = True) -> torch.Tensor:
    """Pool ``hidden`` [B, T, d] over right-padded ``attention_mask`` [B, T] into float32 [B, d].

    ``mean``: average over non-pad tokens; with ``exclude_bos`` position 0 (BOS) is left out, because
    BOS is the same token in every sentence and in Llama carries a huge "attention sink" activation
    that would dominate the mean. A row with BOS only falls back to including BOS (no 0/0).
    ``last``: the hidden state of the last non-pad token (what a causal LM has read the whole text at).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    mask = attention_mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("pool: a row of attention_mask is all zeros (empty sequence); encode with BOS")
    if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("pool: attention_mask is not right-padded (a 1 follows a 0); "
                         "use padding_side='right'")
    hidden = hidden.float()
    if mode == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    weights = mask.float()
    if exclude_bos:
        # Drop BOS only where something else is left to average.
        weights[:, 0] = (lengths == 1).float()
    return (hidden * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)


class LayerWeights(torch.nn.Module):
    """Learned softmax weights over hidden-state layers ``first..last`` (inclusive, non-negative).

    ``forward(hidden_states)`` returns ``sum_i softmax(logits)_i * hidden_states[first + i]``; logits
    start at zero, i.e. a uniform mean. Works on the full ``output_hidden_states`` tuple or on a
    sequence of per-layer pooled vectors: pooling is linear, so weighting before or after it is the
    same, and :func:`pooled_vectors` weights after pooling to avoid stacking [L, B, T, d].
    """

    def __init__(self, first: int, last: int):
        super().__init__()
        if not 0 <= first <= last:
            raise ValueError(f"LayerWeights needs 0 <= first <= last, got ({first}, {last})")
        self.first, self.last = first, last
        self.logits = torch.nn.Parameter(torch.zeros(last - first + 1))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(hidden_states) <= self.last:
            raise ValueError(f"LayerWeights covers layers {self.first}..{self.last} but only "
                             f"{len(hidden_states)} hidden states were given (0 = embeddings)")
        stacked = torch.stack([hidden_states[i].float() for i in range(self.first, self.last + 1)])
        w = self.weights().view(-1, *([1] * (stacked.dim() - 1)))
        return (w * stacked).sum(dim=0)

    def extra_repr(self) -> str:
        return f"first={self.first}, last={self.last}"


def _layer_index(layer: int, n_states: int) -> int:
    idx = layer + n_states if layer < 0 else layer
    if not 0 <= idx < n_states:
        raise ValueError(f"layer {layer} is out of range: the model has {n_states} hidden states "
                         f"(0 = embeddings .. {n_states - 1} = last layer, or -1)")
    return idx


def pooled_vectors(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, *,
                   layer: int | None = None, layer_range: tuple[int, int] | None = None,
                   layer_weights: LayerWeights | None = None, pooling: str = "mean",
                   exclude_bos: bool = True) -> torch.Tensor:
    """[B, d] float32 vectors from an existing ``output_hidden_states`` tuple (e.g. from a forward
    pass that also feeds a causal-LM loss). Layer choice as in the module docstring."""
    if sum(x is not None for x in (layer, layer_range, layer_weights)) > 1:
        raise ValueError("give at most one of layer, layer_range, layer_weights")
    n = len(hidden_states)
    if layer_weights is not None:
        layers = range(layer_weights.first, layer_weights.last + 1)
    elif layer_range is not None:
        a, b = (_layer_index(i, n) for i in layer_range)
        if a > b:
            raise ValueError(f"layer_range {layer_range} is empty (first > last)")
        layers = range(a, b + 1)
    else:
        layers = [_layer_index(-1 if layer is None else layer, n)]
    pooled = {i: pool(hidden_states[_layer_index(i, n)], attention_mask, pooling, exclude_bos)
              for i in layers}
    if layer_weights is not None:
        # LayerWeights indexes by absolute layer; hand it a sparse list of pooled vectors.
        return layer_weights([pooled.get(i) for i in range(layer_weights.last + 1)])
    return torch.stack(list(pooled.values())).mean(dim=0)


def _unwrap(model):
    """The innermost HF model under DDP (``.module``) and PEFT (``get_base_model``) wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states_of(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One forward pass with ``output_hidden_states=True``; returns the tuple (length n_layers + 1).

    The wrapped model's own forward is called (DDP/accelerate need that for gradient sync), but with
    ``logits_to_keep=1`` where supported: the [B, T, vocab] logits are not needed for vectors.
    """
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True, use_cache=False)
    if "logits_to_keep" in inspect.signature(_unwrap(model).forward).parameters:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs).hidden_states


def sentence_vectors(model, batch: dict[str, torch.Tensor], *, layer: int | None = None,
                     layer_range: tuple[int, int] | None = None, layer_weights: LayerWeights | None = None,
                     pooling: str = "mean", exclude_bos: bool = True) -> torch.Tensor:
    """[B, d] float32 vectors for an :func:`encode_batch` batch (already on the model's device).

    Keeps the autograd graph, so it is the training entry point; see :func:`embed_texts` for eval.
    """
    hs = hidden_states_of(model, batch)
    return pooled_vectors(hs, batch["attention_mask"], layer=layer, layer_range=layer_range,
                          layer_weights=layer_weights, pooling=pooling, exclude_bos=exclude_bos)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_len: int, device):
    """Yield (original indices, batch). Texts are sorted by length so batches carry little padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_batch(tokenizer, [texts[i] for i in idx], max_len)
        yield idx, {k: v.to(device) for k, v in batch.items()}


@contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) for a block, then the caller's mode back: evaluating mid-training
    must not leave the model in eval."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], *, layer: int | None = None,
                layer_range: tuple[int, int] | None = None, layer_weights: LayerWeights | None = None,
                pooling: str = "mean", batch_size: int = 32, max_len: int = 256,
                exclude_bos: bool = True) -> torch.Tensor:
    """[n, d] float32 CPU vectors for ``texts``, in input order (no grad, eval mode, batched)."""
    out = None
    with _eval_mode(model):
        for idx, batch in _batches(tokenizer, texts, batch_size, max_len, _device(model)):
            v = sentence_vectors(model, batch, layer=layer, layer_range=layer_range,
                                 layer_weights=layer_weights, pooling=pooling, exclude_bos=exclude_bos).cpu()
            out = torch.empty(len(texts), v.shape[-1]) if out is None else out
            out[idx] = v
    if out is None:
        raise ValueError("embed_texts: no texts given")
    return out


@torch.no_grad()
def all_layer_vectors(model, tokenizer, texts: Sequence[str], *, pooling: str = "mean",
                      batch_size: int = 32, max_len: int = 256, exclude_bos: bool = True) -> torch.Tensor:
    """[n_layers + 1, n, d] float32 CPU vectors: every hidden state pooled, one forward per batch."""
    out = None
    with _eval_mode(model):
        for idx, batch in _batches(tokenizer, texts, batch_size, max_len, _device(model)):
            hs = hidden_states_of(model, batch)
            v = torch.stack([pool(h, batch["attention_mask"], pooling, exclude_bos) for h in hs]).cpu()
            out = torch.empty(v.shape[0], len(texts), v.shape[-1]) if out is None else out
            out[:, idx] = v
    if out is None:
        raise ValueError("all_layer_vectors: no texts given")
    return out


# ---- alignment metrics on paired vectors: ko[i] is the translation of en[i] ----

def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"expected two [n, d] tensors of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def retrieval_p1(src: torch.Tensor, tgt: torch.Tensor) -> float:
    """Fraction of i whose cosine-nearest row of ``tgt`` is ``tgt[i]`` (ties go to the lower index)."""
    sims = _cosine_matrix(src, tgt)
    hits = sims.argmax(dim=1) == torch.arange(sims.shape[0], device=sims.device)
    return hits.double().mean().item()


def pair_cosines(ko: torch.Tensor, en: torch.Tensor) -> torch.Tensor:
    """[n] cosine of each translation pair (the diagonal of the cosine matrix)."""
    return _cosine_matrix(ko, en).diagonal().float()


def nonpair_cosine(ko: torch.Tensor, en: torch.Tensor) -> float:
    """Mean off-diagonal cosine: how similar *unrelated* Ko/En sentences look (anisotropy baseline)."""
    sims = _cosine_matrix(ko, en)
    n = sims.shape[0]
    if n < 2:
        raise ValueError("nonpair_cosine needs at least 2 pairs")
    return ((sims.sum() - sims.diagonal().sum()) / (n * n - n)).item()


def alignment_report(ko: torch.Tensor, en: torch.Tensor) -> dict[str, float]:
    """``pair_cos`` (mean diagonal), ``nonpair_cos``, ``gap`` = pair - nonpair, and P@1 both ways.

    Raw pair cosine is misleading on anisotropic LMs (every pair of sentences may sit at 0.9), so
    read ``gap`` and P@1, not ``pair_cos`` alone.
    """
    pair = pair_cosines(ko, en).double().mean().item()
    nonpair = nonpair_cosine(ko, en)
    return {"pair_cos": pair, "nonpair_cos": nonpair, "gap": pair - nonpair,
            "p1_ko2en": retrieval_p1(ko, en), "p1_en2ko": retrieval_p1(en, ko)}
