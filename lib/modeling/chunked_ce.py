"""Cross-entropy from hidden states and the LM head's weight, chunk by chunk: never the full logits.

With a 39,478-token vocabulary, the ``[tokens, vocab]`` logits and what the loss keeps of them for
the backward pass (fp32 logits, log-softmax, their gradients: ~12-14 bytes per entry) are most of a
training step's memory (issue #26; ``python -m lib.pipeline plan params/a6000.yaml``). Here the loss
is computed ``chunk_tokens`` rows at a time, each chunk's logits recomputed in the backward pass
(:class:`LinearNLL`), so the loss holds one chunk's logits at a time, not all of them. A loss that
is a mean over the targets (``grad_in_forward=True``: every training loss but DPO's) computes the
gradients in the forward pass instead, while each chunk's logits exist, and so needs no extra head
matmul (on the CPU the recomputation cost 0.83x Trainer's tokens/s, ``bench/train_vs_trainer.py``).
Only rows with a target (label != -100) are computed at all: prompt and padding tokens of a
response-only loss skip the head's matmul.

    from lib.modeling.chunked_ce import token_nll
    nll, valid = token_nll(model, batch, chunk_tokens=1024, grad_in_forward=True)   # [B, T-1], 0 where ignored
    loss = nll.sum() / valid.sum()                              # = HF's model(..., labels=).loss

Precision is that of the full computation under the same context: the matmul runs in the autocast
dtype when autocast is on (as ``lm_head`` would), the log-softmax and its gradient in fp32, and the
head's weight gradient is accumulated over chunks in fp32. ``chunk_tokens=0`` is the full
computation (``model(...).logits`` and ``F.cross_entropy``): the reference the tests compare with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.modeling.losses import IGNORE_INDEX
from lib.modeling.model import fp32_region

DEFAULT_CHUNK_TOKENS = 1024   # one chunk of the 39,478-entry head: ~0.5 GB at ~12 bytes an entry


def _compute_dtype(h: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(h, w)`` computes in here: autocast's when it is on, else the inputs'."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, w.dtype)


def _chunk_grads(p, hc, wc, rows: slice, gh, gw, gb, dtype) -> None:
    """Add one chunk's share to the gradients of the hidden states (rows ``rows`` of ``gh``), the
    head's weight (``gw``, fp32) and bias (``gb``) from ``p`` = d nll / d logits (fp32, [chunk, V]);
    a None gradient is not needed."""
    if gb is not None:
        gb += p.sum(0)
    pc = p.to(dtype)
    if gh is not None:
        gh[rows] = (pc @ wc).to(gh.dtype)
    if gw is not None:
        gw += (pc.T @ hc).float()


def _softmax_minus_onehot(logits, lse, t):
    """d nll / d logits, in place of the fp32 ``logits``: softmax - onehot(t)."""
    p = logits.sub_(lse[:, None]).exp_()
    p[torch.arange(p.shape[0], device=p.device), t] -= 1.0
    return p


class LinearNLL(torch.autograd.Function):
    """``-log softmax(h @ w.T + b)[t]`` per row of ``h`` ([N, d]) for targets ``t`` ([N], all valid),
    in chunks of rows; saves only its inputs and the per-row log-sum-exp, and recomputes each
    chunk's logits in the backward pass (one extra head matmul per chunk).

    ``grad_in_forward``: the caller's loss weighs every row alike (a mean over the targets), so the
    gradients are computed in the forward pass while each chunk's logits exist, and the backward
    only scales them: three head matmuls per chunk, as the full computation does, not four. The
    backward checks that the incoming gradient is the same for every row; where it is not, the
    weight's and bias's gradients are recomputed as without the option (right, and slower);
    the hidden states' gradient is per row and exact either way."""

    @staticmethod
    def forward(ctx, h, w, b, t, chunk: int, dtype: torch.dtype, grad_in_forward: bool = False):
        nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(nll)
        need_h, need_w, need_b = ctx.needs_input_grad[:3] if grad_in_forward else (False, False, False)
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        gb = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        with fp32_region(h):                       # we cast ourselves; the softmax stays fp32
            wc, bc = w.to(dtype), (None if b is None else b.to(dtype))
            for s in range(0, h.shape[0], chunk):
                rows, hc = slice(s, s + chunk), h[s:s + chunk].to(dtype)
                logits = F.linear(hc, wc, bc).float()
                lse[rows] = torch.logsumexp(logits, dim=-1)
                nll[rows] = lse[rows] - logits.gather(1, t[rows, None]).squeeze(1)
                if need_h or need_w or need_b:
                    _chunk_grads(_softmax_minus_onehot(logits, lse[rows], t[rows]), hc, wc, rows, gh, gw, gb, dtype)
        ctx.save_for_backward(h, w, b, t, lse, gh, gw, gb)
        ctx.chunk, ctx.dtype, ctx.early = chunk, dtype, grad_in_forward
        return nll

    @staticmethod
    def backward(ctx, g):
        h, w, b, t, lse, gh0, gw0, gb0 = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = g.float()
        gh = gw = gb = None
        if ctx.early:                              # scale what the forward computed
            gh = gh0 * g[:, None].to(gh0.dtype) if need_h else None
            if g.numel() == 0 or bool((g == g[0]).all()):
                gw = gw0 * g[0] if need_w and g.numel() else gw0
                gb = gb0 * g[0] if need_b and g.numel() else gb0
                need_w = need_b = False
            need_h = False
        if need_h or need_w or need_b:             # recompute each chunk's logits
            gh = torch.empty_like(h) if need_h else gh
            gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else gw
            gb = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else gb
            with fp32_region(h):
                wc, bc = w.to(dtype), (None if b is None else b.to(dtype))
                for s in range(0, h.shape[0], chunk):
                    rows, hc = slice(s, s + chunk), h[s:s + chunk].to(dtype)
                    p = _softmax_minus_onehot(F.linear(hc, wc, bc).float(), lse[rows], t[rows])
                    _chunk_grads(p.mul_(g[rows, None]), hc, wc, rows, gh if need_h else None,
                                 gw if need_w else None, gb if need_b else None, dtype)
        return (gh, None if gw is None else gw.to(w.dtype), None if gb is None else gb.to(b.dtype),
                None, None, None, None)


def linear_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS, ignore_index: int = IGNORE_INDEX,
               grad_in_forward: bool = False) -> torch.Tensor:
    """Per-position NLL (fp32, shape of ``targets``; 0 where ``targets == ignore_index``) of the
    logits ``hidden @ weight.T + bias`` ([..., d] x [V, d]); ``chunk_tokens=0``: the full logits.
    ``grad_in_forward``: the loss will be a mean of these numbers (:class:`LinearNLL`); only acted
    on where gradients are being recorded."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"linear_nll expects hidden [..., d] and targets [...] of the same leading shape, got "
                         f"{tuple(hidden.shape)} and {tuple(targets.shape)}")
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0 (0: the full logits), got {chunk_tokens}")
    if chunk_tokens == 0:
        logits = F.linear(hidden, weight, bias)
        return F.cross_entropy(logits.float().reshape(-1, weight.shape[0]), targets.reshape(-1),
                               ignore_index=ignore_index, reduction="none").reshape(targets.shape)
    flat_t = targets.reshape(-1)
    rows = (flat_t != ignore_index).nonzero().squeeze(1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    nll = LinearNLL.apply(h, weight, bias, flat_t.index_select(0, rows), chunk_tokens,
                          _compute_dtype(hidden, weight), grad_in_forward and torch.is_grad_enabled())
    out = torch.zeros(flat_t.shape[0], dtype=torch.float32, device=hidden.device)
    return out.index_put((rows,), nll).reshape(targets.shape)


# ----------------------------------------------------------------------------- causal LMs

def plain_linear(head) -> torch.nn.Linear | None:
    """The ``nn.Linear`` that computes ``head``'s output, looking through peft's
    ``ModulesToSaveWrapper`` (honouring ``disable_adapter()``); None when the head is anything else
    (LoRA on the head, a quantised head), whose output only its own forward knows."""
    if isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward:
        return head
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        off = head.disable_adapters or not head.active_adapters
        return plain_linear(head.original_module if off else head.modules_to_save[head.active_adapters[0]])
    return None


def _unwrapped(model):
    """The model under a DDP wrapper (whose forward we still call, so gradients synchronise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def lm_inputs(model, batch: dict) -> dict:
    """The keyword arguments of a training forward on ``batch``.

    A batch without ``position_ids``: ``input_ids`` and ``attention_mask``. A batch with them holds
    packed documents that must not see each other (``lib.data.packing``, ``packing: documents``;
    no padding): the attention mask is left out, so transformers reads the documents from the
    position ids that restart at each one (only without a key/value cache: ``use_cache=False``).
    sdpa, eager and flex attention then build a
    block-diagonal causal mask per row (``masking_utils.find_packed_sequence_indices``);
    flash-attention's variable-length path reads them only from a single flattened row
    (``modeling_flash_attention_utils._is_packed_sequence``: batch size 1), so for a flash
    implementation the rows are flattened into one (each row starts at position 0, so rows stay
    apart too) and the caller reshapes the output back (``input_ids``' shape is in ``"shape"``).
    """
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" not in batch:
        return {**inputs, "attention_mask": batch["attention_mask"]}
    impl = getattr(getattr(_unwrapped(model), "config", None), "_attn_implementation", None) or ""
    if "flash" in impl:                       # transformers' own test (utils.is_flash_attention_requested)
        return {**inputs, "input_ids": batch["input_ids"].reshape(1, -1),
                "position_ids": batch["position_ids"].reshape(1, -1), "shape": tuple(batch["input_ids"].shape)}
    return {**inputs, "position_ids": batch["position_ids"]}


def token_nll(model, batch: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
              grad_in_forward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, valid)`` of a causal LM on ``batch`` (``input_ids``, ``attention_mask``, ``labels``
    aligned with the ids as for HF's ``labels=``; optionally ``position_ids`` of packed documents,
    :func:`lm_inputs`): position t predicts ``labels[:, t+1]``; both [B, T-1], ``nll`` fp32 and 0
    where the label is -100.

    The forward goes through ``model`` itself (DDP, peft) with ``logits_to_keep=1``, so the model
    computes one position's logits; the decoder's last hidden state is caught by a forward hook and
    :func:`linear_nll` does the rest against the head's weight. The full logits are used when
    ``chunk_tokens`` is 0 or the head is not a plain linear layer (:func:`plain_linear`).
    ``grad_in_forward``: the loss will be :func:`mean_nll` of the result (every target weighs the
    same), so the head's gradients are computed in the forward pass and not recomputed
    (:class:`LinearNLL`; a loss that weighs targets differently, DPO's, leaves it off).
    """
    inner = _unwrapped(model)
    head = plain_linear(inner.get_output_embeddings())
    tgt = batch["labels"][:, 1:]
    valid = tgt != IGNORE_INDEX
    inputs = lm_inputs(model, batch)
    shape = inputs.pop("shape", tuple(batch["input_ids"].shape))
    if chunk_tokens == 0 or head is None:
        logits = model(**inputs).logits.reshape(*shape, -1)[:, :-1]
        # rows of [N, V], as HF's loss: over [B, V, T] (a transpose) a CPU step took ~1.4x as long
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="none").reshape(tgt.shape)
        return nll, valid
    caught = {}

    def catch(module, args, out):
        caught["h"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

    hook = inner.get_decoder().register_forward_hook(catch)
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        hook.remove()
    h = caught["h"].reshape(*shape, -1)[:, :-1]
    return linear_nll(h, head.weight, tgt, head.bias, chunk_tokens, grad_in_forward=grad_in_forward), valid


def mean_nll(nll: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions (HF's loss); 0, still attached to the graph, when there is none."""
    n = valid.sum()
    return nll.sum() / n if bool(n > 0) else nll.sum() * 0.0
