"""lib.eval.kvscore: each shared context scored once gives HFLM's log-likelihoods and is_greedy.

The reference is lm-eval's own ``HFLM`` on the same model object and the same requests: every
log-likelihood equal to 1e-5 (fp32) and every is_greedy flag equal, over requests chosen to hit
each path: several options per context (multi-token and one-token), empty contexts (lm-eval
scores them after ``[BOS]``), duplicates, contexts of different lengths in one batch (padded
prefixes), requests longer than the model's context (cut from the left), continuations that are
the model's own greedy tokens (is_greedy true), batch sizes 1, 3 and 16.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import EN_LINES, KO_LINES

from lib.eval import harness as E
from lib.eval import tasks as ET
from lib.eval.kvscore import ContextOnceHFLM, split_request

TOL = 1e-5


def instances(requests):
    from lm_eval.api.instance import Instance
    return [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(requests)]


def greedy_requests(model, tok) -> list[tuple[None, list[int], list[int]]]:
    """Token-level requests whose continuation is the model's own next 1-3 tokens (is_greedy
    true), next to one that is not: ``(None, context ids, continuation ids)``."""
    out = []
    for ctx in ("The cat sees the", "The farmer paints", "고양이가 사과를", "The dog likes"):
        ids = tok(ctx)["input_ids"]
        cont = []
        with torch.no_grad():
            for n in range(3):
                cont.append(int(model(torch.tensor([ids + cont])).logits[0, -1].argmax()))
                out.append((None, ids, list(cont)))
        out.append((None, ids, [cont[0], (cont[1] + 1) % len(tok)]))
    return out


def mixed_requests(model, tok) -> list[tuple[str, str]]:
    reqs = []
    for i, ctx in enumerate(EN_LINES[:7] + KO_LINES[:3]):
        ctx = " ".join([ctx] * (1 + i % 4))               # contexts of 1-4 sentences: different lengths
        for opt in (" the apple", " near the river on day 3", " 학교", " a"):
            reqs.append((ctx + "\nAnswer:", opt))
        reqs.append(("", " the apple"))                   # acc_mutual_info's neutral prompt
    return reqs + reqs[:3]                                # duplicates


def compare(model, tok, reqs, batch_size, token_reqs=(), **kw):
    from lm_eval.models.huggingface import HFLM
    ref = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=batch_size, softmax_dtype="float32", **kw)
    fast = ContextOnceHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=batch_size,
                           softmax_dtype="float32", **kw)
    a = ref.loglikelihood(instances(reqs), disable_tqdm=True)
    b = fast.loglikelihood(instances(reqs), disable_tqdm=True)
    if token_reqs:
        a += ref._loglikelihood_tokens(token_reqs, disable_tqdm=True)
        b += fast._loglikelihood_tokens(token_reqs, disable_tqdm=True)
    return a, b, fast


@pytest.fixture(scope="module")
def tiny(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_assets["model"])


def test_split_request_is_hflm_input():
    # HFLM's input is (ctx + cont)[-(L + 1):][:-1]; prefix + cont[:-1] must be exactly that
    assert split_request([1, 5, 6], [7, 8], 10) == ((1, 5, 6), (7, 8))
    ctx, cont, L = list(range(1, 11)), [20, 21, 22], 6
    prefix, c = split_request(ctx, cont, L)
    assert list(prefix) + list(c[:-1]) == (ctx + cont)[-(L + 1):][:-1] and prefix == (7, 8, 9, 10)
    with pytest.raises(ValueError, match="longer than the model's maximum length 6"):
        split_request([1], list(range(7)), 6)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_same_logliks_and_greedy_as_hflm(tiny, batch_size, monkeypatch):
    from lm_eval.models.huggingface import HFLM
    model, tok = tiny
    reqs = mixed_requests(model, tok)
    ref_method = HFLM._loglikelihood_tokens
    calls = []
    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", lambda self, *a, **k: calls.append(type(self)) or
                        ref_method(self, *a, **k))
    a, b, _ = compare(model, tok, reqs, batch_size, greedy_requests(model, tok))
    assert calls == [HFLM, HFLM]                                # the fast path ran, not the fallback
    diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
    assert diff <= TOL, diff
    assert [x[1] for x in a] == [y[1] for y in b]
    assert sum(x[1] for x in a[-16:]) == 12               # the greedy continuations, not the altered ones
    assert len({round(x[0], 3) for x in a}) > len(a) // 2   # real, varied numbers


def test_left_truncation_matches_hflm(tiny):
    model, tok = tiny
    reqs = mixed_requests(model, tok)
    lengths = [len(tok(c + o)["input_ids"]) for c, o in reqs]
    assert sum(n > 21 for n in lengths) > 10              # many requests longer than max_length + 1
    a, b, fast = compare(model, tok, reqs, 4, greedy_requests(model, tok), max_length=20)
    assert fast.max_length == 20
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= TOL
    assert [x[1] for x in a] == [y[1] for y in b]


@pytest.mark.slow
def test_harness_run_equals_hflm_and_scores_fewer_tokens(tmp_path, tiny, monkeypatch):
    """Through lm-eval's simple_evaluate on generated ARC and Belebele tasks (acc_mutual_info's
    empty-context requests included): the same per-sample log-likelihoods and accuracies."""
    from lm_eval.models.huggingface import HFLM
    from test_evaluate import arc_pair, belebele_pair
    model, tok = tiny
    pairs = ET.write_tasks({"arc": arc_pair(tmp_path / "d"), "bb": belebele_pair(tmp_path / "d")}, tmp_path / "tasks")
    tokens = {"n": 0}
    forward = model.forward

    @functools.wraps(forward)                             # keeps forward's signature (cache, logits_to_keep)
    def counting(*a, **k):
        tokens["n"] += k["input_ids"].numel() if "input_ids" in k else a[0].numel()
        return forward(*a, **k)
    monkeypatch.setattr(model, "forward", counting)
    out = {}
    for cls in (HFLM, ContextOnceHFLM):
        tokens["n"] = 0
        lm = cls(pretrained=model, tokenizer=tok, device="cpu", batch_size=4, softmax_dtype="float32")
        out[cls] = (E.run_harness(lm, pairs, tmp_path / "tasks", batch_size=4), tokens["n"])
    (ref, n_ref), (fast, n_fast) = out[HFLM], out[ContextOnceHFLM]
    assert n_fast < 0.7 * n_ref                           # token positions run through the model
    for task in ("arc_en", "arc_ko", "bb_en", "bb_ko"):
        for s, t in zip(ref["samples"][task], fast["samples"][task], strict=True):
            assert s["doc_id"] == t["doc_id"]
            assert [r[0] for r in s["filtered_resps"]] == pytest.approx([r[0] for r in t["filtered_resps"]], abs=TOL)
            assert [r[1] for r in s["filtered_resps"]] == [r[1] for r in t["filtered_resps"]]
        for k in ("acc,none", "acc_norm,none", "acc_mutual_info,none"):
            assert ref["results"][task][k] == fast["results"][task][k]


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_tokenizer_and_belebele_passages(shared_data, tmp_path):
    """A random Llama with the real Llama-2 tokenizer on real Belebele passages (English and
    Korean, hundreds of tokens): the same numbers as HFLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model
    tok = hf_tokenizer_from_sp(load_sp_model(shared_data / "tokenizers/llama2/tokenizer.model"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)).eval()
    reqs = []
    for lang, path in (("en", "eng_Latn"), ("ko", "kor_Hang")):
        en, ko = ET.load_pair({"en": str(shared_data / "bench/belebele/eng_Latn.jsonl"),
                               "ko": str(shared_data / "bench/belebele/kor_Hang.jsonl"), "format": "belebele"})
        for doc in (en if lang == "en" else ko)[:3]:
            ctx = ET.prompt("belebele", lang, doc)
            reqs += [(ctx, " " + c) for c in ET.choices("belebele", doc)] + [("", " " + c) for c in ET.choices("belebele", doc)]
    assert max(len(tok(c)["input_ids"]) for c, _ in reqs) > 100
    a, b, _ = compare(model, tok, reqs, 8)
    # sums of up to ~260 nats (a random 32,000-way model, options of 5-25 tokens): one float32
    # ulp there is 3e-5, and HFLM against itself at batch size 1 differs by 1.5e-5 already. So the
    # bound is 1e-5 or 4 float32 ulps of the value (measured: at most 2 ulps, 3.05e-5)
    for x, y in zip(a, b):
        assert abs(x[0] - y[0]) <= max(TOL, 4 * float(np.spacing(np.float32(abs(x[0]))))), (x, y)
    assert [x[1] for x in a] == [y[1] for y in b]
