"""The extra alignment terms of stage 1 (and the contrastive term stage 05 keeps): the knobs of the
transfer grid (issue 14), each off by default.

- ``objective: sentence | word | both``: *word-level* InfoNCE. For every training pair, the
  dictionary words found once on each side (:class:`lib.data.wordpairs.Locator`) are located in the
  token sequence (character offsets -> token positions, :func:`word_spans`); a word's vector is the
  mean hidden state over its tokens, and each Korean word must pick out its own English word among
  the batch's other words (same-word duplicates are masked out of the negatives).
- ``layers: representation | all | "i,j,..."``: the loss at several hidden states, averaged
  (``all``: the output of every transformer layer, 1..L); ``representation`` (default) uses only
  the representation of ``layer`` / ``layer_range``, as before.
- ``align_head: true``: also pull each Korean LM-head row toward the row of its English counterpart
  (first token of each word; only Korean rows that are new, id >= the base vocab, move: the gradient
  of every other row is zeroed, so English logits stay as they were).

    spans = word_spans(tok, ko_texts, en_texts, max_len, Locator(read_pairs(path)))
    vecs_ko, vecs_en, ids = word_vectors(hidden, spans_of_batch, n)
    loss = masked_info_nce(vecs_ko, vecs_en, ids, temperature)
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lib.core.readers import read_parallel
from lib.data.wordpairs import Locator
from lib.modeling.chunked_ce import DEFAULT_CHUNK_TOKENS, mean_nll, token_nll
from lib.modeling.losses import info_nce
from lib.modeling.model import fp32_region
from lib.modeling.represent import hidden_states_of, pooled_vectors
from lib.train.pairs import PairBatches, encode_texts, rows_of, stack_batches

OBJECTIVES = ("sentence", "word", "both")
LAYER_MODES = ("representation", "all")


def _parse(spec: Any) -> Any:
    """``"2,4,-1"`` (the notebook parameter is a string) -> ``[2, 4, -1]``; anything else as given."""
    if isinstance(spec, str) and spec not in LAYER_MODES and re.fullmatch(r"\s*-?\d+(\s*,\s*-?\d+)*\s*", spec):
        return [int(x) for x in spec.split(",")]
    return spec


def check_layers(spec: Any) -> None:
    spec = _parse(spec)
    if isinstance(spec, str):
        if spec not in LAYER_MODES:
            raise ValueError(f"layers must be one of {LAYER_MODES} or hidden-state indices such as "
                             f"'2,4,-1', got {spec!r}")
        return
    if not isinstance(spec, (list, tuple)) or not spec or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in spec):
        raise ValueError(f"layers must be 'representation', 'all' or hidden-state indices such as "
                         f"'2,4,-1', got {spec!r}")


def layer_list(spec: Any, n_states: int) -> list[int] | None:
    """Absolute hidden-state indices for ``layers``; None for ``representation``."""
    check_layers(spec)
    spec = _parse(spec)
    if spec == "representation":
        return None
    if spec == "all":
        return list(range(1, n_states))
    out = []
    for i in spec:
        j = i + n_states if i < 0 else i
        if not 0 <= j < n_states:
            raise ValueError(f"layers: {i} is out of range; the model has {n_states} hidden states "
                             f"(0 = embeddings .. {n_states - 1} = last layer)")
        if j not in out:
            out.append(j)
    return sorted(out)


def check_knobs(cfg: Any) -> None:
    """Stage 1's knob values and combinations (called by its config check)."""
    objective = getattr(cfg, "objective", None) or "sentence"
    layers = getattr(cfg, "layers", None) or "representation"
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    check_layers(layers)
    if (objective != "sentence" or layers != "representation") and cfg.english_encoder == "frozen":
        raise ValueError("objective word/both and layers other than 'representation' need "
                         "english_encoder: shared (the frozen copy encodes one fixed representation)")
    if (objective != "sentence" or layers != "representation") and list(cfg.layer_range):
        raise ValueError("objective word/both and layers other than 'representation' replace the "
                         "learned layer weights: set layer_range: [] (or keep the defaults)")


# ----------------------------------------------------------------------------- word positions

def _token_spans(tok, texts: Sequence[str], max_len: int) -> list[list[tuple[int, int]]]:
    """Per text, the character span of each token, in the positions :func:`lib.modeling.represent.encode_batch`
    gives them (BOS first; a prepended BOS shifts by one)."""
    enc = tok(list(texts), add_special_tokens=True, truncation=True, max_length=max_len,
              return_offsets_mapping=True)
    bos = tok.bos_token_id
    out = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"]):
        offs = [tuple(o) for o in offs]
        if bos is not None and ids[:1] != [bos]:
            offs = ([(0, 0)] + offs)[:max_len]
        out.append(offs)
    return out


def _tokens_of(offsets: list[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int] | None:
    """[first, last + 1) of the tokens overlapping a character span; None if cut off."""
    a, b = span
    hit = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    return (hit[0], hit[-1] + 1) if hit else None


def word_spans(tok, ko_texts: Sequence[str], en_texts: Sequence[str], max_len: int,
               locator: Locator) -> list[np.ndarray]:
    """Per training pair, an int array of rows ``[pair_id, ko_start, ko_end, en_start, en_end]``:
    the dictionary words found exactly once on each side, as token ranges. A word the
    truncation cut off is left out."""
    ko_offs, en_offs = _token_spans(tok, ko_texts, max_len), _token_spans(tok, en_texts, max_len)
    out = []
    for ko, en, ko_o, en_o in zip(ko_texts, en_texts, ko_offs, en_offs):
        rows = []
        for pid, ks, es in locator.aligned(ko, en):
            k, e = _tokens_of(ko_o, ks), _tokens_of(en_o, es)
            if k and e:
                rows.append((pid, *k, *e))
        out.append(np.asarray(rows, dtype=np.int32).reshape(-1, 5))
    return out


def span_stats(spans: Sequence[np.ndarray]) -> dict:
    n = [len(s) for s in spans]
    return {"pairs_with_words": int(sum(1 for x in n if x)), "words_per_pair": float(np.mean(n)) if n else 0.0,
            "word_occurrences": int(sum(n)), "distinct_words": int(len({int(r[0]) for s in spans for r in s}))}


def batch_spans(spans: Sequence[np.ndarray], idx: Sequence[int]) -> torch.Tensor:
    """The word rows of a batch's pairs with their batch row first: ``[row, pid, ks, ke, es, ee]``."""
    rows = [np.concatenate([np.full((len(spans[i]), 1), r, dtype=np.int32), spans[i]], axis=1)
            for r, i in enumerate(idx) if len(spans[i])]
    if not rows:
        return torch.zeros(0, 6, dtype=torch.long)
    return torch.as_tensor(np.concatenate(rows), dtype=torch.long)


def span_means(states: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """[m, d] mean of ``states[row, start:end]`` for each word (a cumulative sum, no Python loop)."""
    cs = F.pad(states.float().cumsum(dim=1), (0, 0, 1, 0))          # [B, T + 1, d]
    total = cs[rows, end] - cs[rows, start]
    return total / (end - start).clamp(min=1).unsqueeze(1).float()


def word_vectors(states: torch.Tensor, words: torch.Tensor, n_ko: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Korean and English word vectors from one hidden state ``[2n, T, d]`` of a stacked batch
    (Korean rows ``0..n-1``, their English pairs ``n..2n-1``)."""
    r = words[:, 0]
    ko = span_means(states, r, words[:, 2], words[:, 3])
    en = span_means(states, r + n_ko, words[:, 4], words[:, 5])
    return ko, en


def masked_info_nce(a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE where ``a[i]``/``b[i]`` are positives and rows with the same ``ids`` (the
    same word twice in a batch) are not negatives of each other."""
    with fp32_region(a):                     # fp32 logits under autocast too (see lib.modeling.losses)
        u, v = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
        logits = u @ v.T / temperature
        same = ids.unsqueeze(0) == ids.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ----------------------------------------------------------------------------- the shared head

def head_pairs(tok, pairs: Sequence[tuple[str, str]], n_base: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Korean token ids, English token ids): the first token of each word, as it appears after a
    space, one English target per Korean token (the first pair wins); only Korean tokens that are
    new rows (>= ``n_base``) and differ from their English token."""
    ko_ids, en_ids, seen = [], [], set()
    for en, ko in pairs:
        e = tok(f"a {en}", add_special_tokens=False)["input_ids"]
        k = tok(f"a {ko}", add_special_tokens=False)["input_ids"]
        a = tok("a", add_special_tokens=False)["input_ids"]
        e, k = _content(tok, e[len(a):]), _content(tok, k[len(a):])
        if not e or not k:
            continue
        ki, ei = k[0], e[0]
        if ki in seen or ki == ei or (n_base is not None and ki < n_base):
            continue
        seen.add(ki)
        ko_ids.append(ki)
        en_ids.append(ei)
    if not ko_ids:
        raise ValueError("align_head found no Korean word whose first token is a new row of the "
                         "vocabulary: check word_pairs against this tokenizer")
    return torch.tensor(ko_ids), torch.tensor(en_ids)


def _content(tok, ids: list[int]) -> list[int]:
    """``ids`` without leading tokens that are only a word boundary (a bare ``▁``)."""
    while ids and not tok.decode(ids[:1]).strip():
        ids = ids[1:]
    return ids


def only_rows(weight: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the gradient of every row of ``weight`` except ``rows`` (AdamW without weight decay then
    leaves them bit-identical)."""
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[rows.to(weight.device)] = 1
    weight.register_hook(lambda g: g * keep)


def head_alignment_loss(weight: torch.Tensor, ko_ids: torch.Tensor, en_ids: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each Korean head row to its (fixed) English row, relative to the
    English rows' mean squared norm: 1 for zero rows, 0 when they coincide."""
    ko, en = weight[ko_ids.to(weight.device)].float(), weight[en_ids.to(weight.device)].detach().float()
    return ((ko - en) ** 2).sum(1).mean() / (en ** 2).sum(1).mean().clamp(min=1e-12)


# ----------------------------------------------------------------------------- the loss

def alignment_loss(cfg: Any, ko: torch.Tensor, en: torch.Tensor, extra: dict, words) -> tuple[torch.Tensor, dict]:
    """Sentence InfoNCE (at the representation, or averaged over ``layers``), word InfoNCE
    (``objective``), and the head term (``align_head``), summed; each logged on its own."""
    objective, logs, loss = getattr(cfg, "objective", None) or "sentence", {}, 0.0
    if objective in ("sentence", "both"):
        if "layer_vecs" in extra:
            n = ko.shape[0]
            nce = torch.stack([info_nce(v[:n], v[n:], temperature=cfg.temperature)
                               for v in extra["layer_vecs"]]).mean()
        else:
            nce = info_nce(ko, en, temperature=cfg.temperature)
        loss, logs["info_nce"] = loss + nce, nce.item()
    if objective in ("word", "both") and "words" in extra and len(extra["words"][0][0]) >= 2:
        ids = words[:, 1]
        w = torch.stack([masked_info_nce(k, e, ids, cfg.temperature) for k, e in extra["words"]]).mean()
        loss, logs["word_nce"], logs["words_in_batch"] = loss + w, w.item(), int(len(ids))
    if "head" in extra:
        loss, logs["head_align"] = loss + extra["head"], extra["head"].item()
    if not torch.is_tensor(loss):             # a word-only batch without two words: nothing to learn
        loss = ko.sum() * 0.0
    return loss, logs


# ----------------------------------------------------------------------------- stage 05: keep the term

class ClmWithAlignment(torch.nn.Module):
    """05 with ``align_weight > 0``: one module whose forward gives the causal-LM loss of the packed
    blocks and the sentence InfoNCE of a batch of parallel pairs (Korean rows first), so that DDP
    sees one forward per backward. The contrastive term of stage 1, kept during pretraining."""

    def __init__(self, lm, layer: int, temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        super().__init__()
        self.lm, self.layer, self.temperature, self.chunk_tokens = lm, layer, temperature, chunk_tokens

    def forward(self, clm: dict, pairs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        nll, valid = token_nll(self.lm, clm, self.chunk_tokens, grad_in_forward=True)   # chunked: no full logits
        hs = hidden_states_of(self.lm, pairs)
        v = pooled_vectors(hs, pairs["attention_mask"], layer=self.layer, pooling="mean")
        n = v.shape[0] // 2
        return mean_nll(nll, valid), info_nce(v[:n], v[n:], temperature=self.temperature)


def pretrain_with_alignment(cfg: Any, model, tok, stream):
    """(modules, batch_at, loss_fn, info) for 05 when ``align_weight > 0``."""
    ko, en = read_parallel(cfg.path(cfg.align_pairs_ko), cfg.path(cfg.align_pairs_en))
    enc = {"ko": encode_texts(tok, ko, cfg.align_max_len), "en": encode_texts(tok, en, cfg.align_max_len)}
    pairs = PairBatches(len(ko), cfg.align_batch_size, cfg.grad_accum, cfg.seed)
    module = ClmWithAlignment(model, cfg.align_layer, cfg.align_temperature, cfg.loss_chunk_tokens)

    def batch_at(step: int, micro: int, rank: int, world: int) -> dict:
        idx = pairs.indices(step, micro, rank, world)
        return {"clm": stream.batch(step, micro, rank, world),
                "pairs": stack_batches([rows_of(enc["ko"], idx), rows_of(enc["en"], idx)])}

    def loss_fn(mods, batch):
        clm, nce = mods[0](batch["clm"], batch["pairs"])
        return clm + cfg.align_weight * nce, {"clm": clm.item(), "info_nce": nce.item()}

    return [module], batch_at, loss_fn, {"align_pairs": len(ko), "align_pair_epochs": pairs.epochs(cfg.steps)}
