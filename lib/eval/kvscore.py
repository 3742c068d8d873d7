"""Multiple-choice log-likelihoods with each shared context scored once (an lm-eval model class).

lm-eval's ``HFLM`` scores every (context, option) request with its own forward pass over
context + option, so a 4-option Belebele item runs its passage (hundreds of tokens) through the
model 4 times, and 8 times with ``acc_mutual_info``'s neutral-prompt requests. ``ContextOnceHFLM``
is ``HFLM`` with one method replaced, ``_loglikelihood_tokens``: requests are grouped by the tokens
they are scored after, each group's context runs once (``use_cache``: its keys and values are kept)
and its options run on those cached keys/values, a few tokens each. Tasks, request building,
metrics and logs stay lm-eval's; the numbers are the same as ``HFLM``'s (``tests/test_kvscore.py``:
log-likelihoods equal to 1e-5 in fp32, the same ``is_greedy``). With bf16 weights or under bf16
autocast (07's ``precision``), the cached prefix plus a short tail pass rounds differently from
HFLM's full passes, so near-tie items can flip: every model of a run is scored by the same scorer,
so comparisons hold; for HFLM's numbers bit for bit, score in ``fp32`` (GPU_AUDIT F12, retired).

What exactly is computed, as in ``HFLM`` (causal backend): the model input of a request is
``(context + continuation)[-(max_length + 1):][:-1]`` (too long: cut from the left), and the
continuation's log-probabilities are read from its last ``len(continuation)`` positions. Here that
input is split into a *prefix* (everything up to and including the token before the continuation)
and a *tail* (the continuation without its last token). The prefix's last position gives the first
continuation token's distribution, the tail's positions the rest, so a one-token option (yes/no)
needs no tail at all. Requests with the same prefix (the options of an item; every neutral-prompt
request, whose context lm-eval makes ``[BOS]``) share one prefix pass; identical requests are
scored once.

Batching: up to ``batch_size`` prefixes per forward pass, padded on the right (no mask needed:
a causal model's real positions never see the padding to their right) with the LM head applied at
each row's last real position only (``logits_to_keep``); then up to ``batch_size`` tails per pass,
each on a copy of its prefix's cache rows (a ``DynamicCache`` built from the selected rows), with
an attention mask hiding the padding of shorter prefixes and position ids continuing each prefix.

    from lib.eval.kvscore import ContextOnceHFLM
    lm = ContextOnceHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=16)
    simple_evaluate(model=lm, tasks=[...])          # as with HFLM

Falls back to ``HFLM``'s own method for what it does not cover: ``batch_size="auto"``,
sequence-to-sequence models, models whose ``forward`` takes no key/value cache.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm
from transformers import DynamicCache

Request = tuple[tuple[str, str] | None, list[int], list[int]]   # ((context, continuation), ctx ids, cont ids)


def split_request(context_enc: Sequence[int], continuation_enc: Sequence[int],
                  max_length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(prefix, continuation)``: the tokens scored once per group and the continuation, so
    that ``prefix + continuation[:-1]`` is exactly HFLM's model input (left-truncated to
    ``max_length``) and the prefix ends with the token before the continuation."""
    if not context_enc or not continuation_enc:
        raise ValueError("a log-likelihood request needs a non-empty context and continuation "
                         f"(got {len(context_enc)} and {len(continuation_enc)} tokens)")
    if len(continuation_enc) > max_length:
        raise ValueError(f"a continuation of {len(continuation_enc)} tokens is longer than the "
                         f"model's maximum length {max_length}")
    whole = (list(context_enc) + list(continuation_enc))[-(max_length + 1):]
    return tuple(whole[:len(whole) - len(continuation_enc)]), tuple(continuation_enc)


def _accepts(model: Any, name: str) -> bool:
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        if m is not None and name in inspect.signature(m.forward).parameters:
            return True
    return False


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def select_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new ``DynamicCache`` holding ``rows`` (batch indices, repeats allowed) of ``cache``;
    ``cache`` itself is left as it is."""
    layers = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise NotImplementedError("sliding-window cache layers are not supported")
        layers.append((layer.keys.index_select(0, rows), layer.values.index_select(0, rows)))
    return DynamicCache(ddp_cache_data=layers)


class ContextOnceHFLM(HFLM):
    """lm-eval's ``HFLM`` scoring each distinct context once (see the module docstring)."""

    def _kv_supported(self) -> bool:
        if self.backend != "causal" or self.batch_size == "auto":
            return False
        model = self.model
        if not hasattr(self, "_kv_names"):
            cache = "cache" if _accepts(model, "cache") else \
                "past_key_values" if _accepts(model, "past_key_values") else None
            self._kv_names = (cache, _accepts(model, "logits_to_keep"))
        return self._kv_names[0] is not None

    def _forward(self, **kwargs: Any) -> Any:
        """One model call as HFLM's ``_model_call`` makes it: no grad, HFLM's autocast setting."""
        dtype = getattr(self, "mixed_precision_dtype", None)      # lm-eval >= 0.4.10
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(**kwargs)

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if not self._kv_supported():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        n = int(override_bs or self.batch_size)
        keys = [split_request(ctx, cont, self.max_length) for _, ctx, cont in requests]
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for prefix, cont in keys:
            conts = groups.setdefault(prefix, [])
            if cont not in conts:
                conts.append(cont)
        # longest first, as HFLM: an out-of-memory error shows at once; similar lengths pad less
        order = sorted(groups, key=lambda p: (-len(p), p))
        per_prefix: dict[tuple[int, ...], int] = {}
        for prefix, _ in keys:
            per_prefix[prefix] = per_prefix.get(prefix, 0) + 1
        scores: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                   desc="Running loglikelihood requests (contexts once)")
        for start in range(0, len(order), n):
            batch = order[start:start + n]
            scores.update(self._score_groups(batch, {p: groups[p] for p in batch}, n))
            bar.update(sum(per_prefix[p] for p in batch))
        bar.close()
        out = []
        for (request_str, _, _), key in zip(requests, keys):
            answer = scores[key]
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
            out.append(answer)
        return out

    def _score_groups(self, prefixes: list[tuple[int, ...]], conts: dict[tuple[int, ...], list[tuple[int, ...]]],
                      n: int) -> dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]]:
        """Score every continuation of these prefixes: one pass over the prefixes, then the tails
        of continuations longer than one token on the cached keys/values, ``n`` rows a pass."""
        cache_kw, keep_kw = self._kv_names
        dev = self.device
        lengths = [len(p) for p in prefixes]
        width = max(lengths)
        inp = torch.zeros(len(prefixes), width, dtype=torch.long, device=dev)
        for i, p in enumerate(prefixes):
            inp[i, :len(p)] = torch.tensor(p, dtype=torch.long, device=dev)
        last = torch.tensor([x - 1 for x in lengths], device=dev)
        kwargs: dict[str, Any] = {"input_ids": inp, "use_cache": True}
        if keep_kw:
            kept = torch.unique(last)                     # sorted positions: the LM head runs on these only
            kwargs["logits_to_keep"] = kept
            where = torch.searchsorted(kept, last)
        else:
            where = last
        out = self._forward(**kwargs)
        rows = torch.arange(len(prefixes), device=dev)
        first = F.log_softmax(out.logits[rows, where], dim=-1, dtype=self.softmax_dtype)   # [G, vocab]
        cache = _cache_of(out)
        del out
        res = {}
        tails = []                                        # (group row, prefix, continuation)
        for g, p in enumerate(prefixes):
            for c in conts[p]:
                if len(c) == 1:
                    res[(p, c)] = (float(first[g, c[0]]), bool(int(first[g].argmax()) == c[0]))
                else:
                    tails.append((g, p, c))
        for start in range(0, len(tails), n):
            res.update(self._score_tails(tails[start:start + n], cache, first, lengths, width, cache_kw))
        return res

    def _score_tails(self, chunk: list[tuple[int, tuple[int, ...], tuple[int, ...]]], cache: Any,
                     first: torch.Tensor, lengths: list[int], width: int,
                     cache_kw: str) -> dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]]:
        dev = self.device
        t = max(len(c) - 1 for _, _, c in chunk)
        inp = torch.zeros(len(chunk), t, dtype=torch.long, device=dev)
        for i, (_, _, c) in enumerate(chunk):
            inp[i, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long, device=dev)
        groups = torch.tensor([g for g, _, _ in chunk], device=dev)
        plen = torch.tensor([lengths[g] for g, _, _ in chunk], device=dev)
        kwargs: dict[str, Any] = {"input_ids": inp, cache_kw: select_rows(cache, groups), "use_cache": True}
        if any(x != width for x in lengths):
            # the cache holds every prefix padded to ``width``: hide a shorter prefix's padding
            # and continue its positions where its own tokens end
            mask = torch.ones(len(chunk), width + t, dtype=torch.long, device=dev)
            mask[:, :width] = (torch.arange(width, device=dev)[None, :] < plen[:, None]).long()
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = plen[:, None] + torch.arange(t, device=dev)[None, :]
        logp = F.log_softmax(self._forward(**kwargs).logits, dim=-1, dtype=self.softmax_dtype)  # [R, t, vocab]
        res = {}
        for i, (g, p, c) in enumerate(chunk):
            rest = logp[i, :len(c) - 1]                   # predicts c[1:]
            target = torch.tensor(c[1:], device=dev)
            ll = first[g, c[0]] + rest.gather(1, target[:, None]).sum()
            greedy = int(first[g].argmax()) == c[0] and bool((rest.argmax(-1) == target).all())
            res[(p, c)] = (float(ll), greedy)
        return res
