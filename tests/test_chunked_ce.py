"""Chunked linear cross-entropy (lib.modeling.chunked_ce) against the full logits: loss and
gradients of the hidden states and the head, fp32 and bf16 autocast, an odd vocabulary, ignored
labels, chunks that do not divide the tokens; and a tiny Llama (plain and peft) against HF's own loss."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from lib.modeling.chunked_ce import linear_nll, mean_nll, plain_linear, token_nll
from lib.modeling.losses import IGNORE_INDEX

V, D = 97, 24          # an odd vocabulary: no chunk or row count lines up with it


def head_case(seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 11, D, generator=g).requires_grad_(True)
    w = (torch.randn(V, D, generator=g) * 0.3).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_(True) if bias else None
    t = torch.randint(0, V, (3, 11), generator=g)
    t[0, :4] = IGNORE_INDEX
    t[2, 7:] = IGNORE_INDEX
    return h, w, b, t


def loss_and_grads(h, w, b, t, chunk, autocast=False, early=False, uniform=False):
    for x in (h, w, b):
        if x is not None:
            x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        nll = linear_nll(h, w, t, b, chunk_tokens=chunk, grad_in_forward=early)
        valid = t != IGNORE_INDEX
        # a mean and per-row sums with other weights: the backward sees a non-uniform gradient
        loss = mean_nll(nll, valid) + (0 if uniform else 0.1 * (nll.sum(-1) * torch.tensor([1.0, -2.0, 0.5])).sum())
    loss.backward()
    return nll.detach(), [x.grad.clone() for x in (h, w, b) if x is not None]


@pytest.mark.parametrize("early,uniform", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_equals_full_fp32(chunk, bias, early, uniform):
    """Gradients recomputed in the backward, or computed in the forward (``grad_in_forward``) for a
    mean loss and for one that weighs rows differently (the backward then recomputes w's and b's)."""
    h, w, b, t = head_case(bias=bias)
    ref, ref_grads = loss_and_grads(h, w, b, t, 0, uniform=uniform)
    nll, grads = loss_and_grads(h, w, b, t, chunk, early=early, uniform=uniform)
    assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert bool((nll[t == IGNORE_INDEX] == 0).all())
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("early,uniform", [(False, False), (True, True), (True, False)])
def test_chunked_equals_full_under_bf16_autocast(early, uniform):
    # the matmul runs in bf16 in both (autocast's cast), the log-softmax in fp32: the losses agree
    # to fp32 rounding of the same bf16 logits; gradients to bf16 rounding (the full path rounds
    # the head's gradient once, the chunked one per chunk and sums in fp32)
    h, w, b, t = head_case(1, bias=True)
    ref, ref_grads = loss_and_grads(h, w, b, t, 0, autocast=True, uniform=uniform)
    nll, grads = loss_and_grads(h, w, b, t, 5, autocast=True, early=early, uniform=uniform)
    assert nll.dtype == torch.float32
    assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.float32
        assert_close(got, want, rtol=2e-2, atol=2e-3)
    # and bf16 logits are what both computed: fp32 logits would differ by far more
    fp32, _ = loss_and_grads(h, w, b, t, 0)
    assert (fp32 - nll).abs().max() > 1e-4


def saved_sizes(fn) -> list[int]:
    """numel of every tensor autograd saves for the backward while ``fn`` runs."""
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return out, sizes


def test_frozen_head_gets_no_gradient_and_nothing_is_kept_of_the_logits():
    h, w, _, t = head_case(2)
    w.requires_grad_(False)
    n_logits = int((t != IGNORE_INDEX).sum()) * V
    _, full = saved_sizes(lambda: linear_nll(h, w, t, chunk_tokens=0))
    assert max(full) >= n_logits                       # the full path keeps the logits
    nll, chunked = saved_sizes(lambda: linear_nll(h, w, t, chunk_tokens=4))
    assert max(chunked) <= max(h.numel(), w.numel())   # inputs and per-row numbers only
    nll.sum().backward()
    assert w.grad is None and h.grad is not None


def test_grad_in_forward_computes_no_logits_in_the_backward(monkeypatch):
    """A mean loss with ``grad_in_forward``: three head matmuls per chunk, all in the forward (as the
    full computation), none in the backward; under no_grad no gradient work at all."""
    import lib.modeling.chunked_ce as cce
    calls = []
    real = cce.F.linear
    monkeypatch.setattr(cce.F, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    h, w, _, t = head_case(4)
    nll = linear_nll(h, w, t, chunk_tokens=4, grad_in_forward=True)
    n_chunks = -(-int((t != IGNORE_INDEX).sum()) // 4)
    assert len(calls) == n_chunks
    calls.clear()
    mean_nll(nll, t != IGNORE_INDEX).backward()
    assert calls == []
    grads = []
    real_grads = cce._chunk_grads
    monkeypatch.setattr(cce, "_chunk_grads", lambda *a: grads.append(1) or real_grads(*a))
    with torch.no_grad():                         # an evaluation: no gradient is computed
        linear_nll(h, w, t, chunk_tokens=4, grad_in_forward=True)
    assert grads == []
    linear_nll(h, w, t, chunk_tokens=4, grad_in_forward=True)
    assert len(grads) == n_chunks


def test_no_valid_label_gives_zero_attached():
    h, w, _, t = head_case(3)
    t[:] = IGNORE_INDEX
    nll = linear_nll(h, w, t, chunk_tokens=4)
    loss = mean_nll(nll, t != IGNORE_INDEX)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(w.grad.abs().sum()) == 0.0


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def lm_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0                          # right padding
    labels = ids.clone()
    labels[mask == 0] = IGNORE_INDEX
    labels[2, :6] = IGNORE_INDEX             # a prompt: response-only loss
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_token_nll_equals_hf_loss_and_gradients(autocast, early):
    model, batch = tiny_llama(), lm_batch()
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = model(**batch, use_cache=False).loss
    ref.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        nll, valid = token_nll(model, batch, chunk_tokens=7, grad_in_forward=early)
        loss = mean_nll(nll, valid)
    loss.backward()
    assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        assert_close(p.grad, want[n], **tol, msg=n)


def test_token_nll_through_peft_modules_to_save_and_disabled_adapter():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny_llama(1), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.modules_to_save["default"].weight.add_(0.5)      # the trained copy differs from the original
    batch = lm_batch(1)
    assert plain_linear(head) is head.modules_to_save["default"]
    for ctx in (torch.autocast("cpu", enabled=False), model.disable_adapter()):
        with ctx:
            full, _ = token_nll(model, batch, chunk_tokens=0)
            chunked, valid = token_nll(model, batch, chunk_tokens=5)
        assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    with model.disable_adapter():
        assert plain_linear(head) is head.original_module
    # the chunked loss trains the head's copy, not the original
    nll, valid = token_nll(model, batch, chunk_tokens=5)
    mean_nll(nll, valid).backward()
    assert head.modules_to_save["default"].weight.grad is not None
    assert head.original_module.weight.grad is None


def test_lora_on_the_head_falls_back_to_the_full_logits():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny_llama(2), LoraConfig(r=4, target_modules=["lm_head"], task_type="CAUSAL_LM",
                                                     init_lora_weights=False))
    assert plain_linear(model.get_output_embeddings()) is None
    batch = lm_batch(2)
    ref = model(**batch, use_cache=False).loss
    nll, valid = token_nll(model, batch, chunk_tokens=5)
    assert_close(mean_nll(nll, valid), ref, rtol=1e-5, atol=1e-6)
