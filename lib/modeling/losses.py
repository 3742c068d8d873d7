"""Losses for the training stages: symmetric InfoNCE (stage 1) and causal-LM cross-entropy.

    from lib.modeling.losses import info_nce, clm_loss, clm_labels
    loss = info_nce(ko_vecs, en_vecs, temperature=0.05)            # [B, d] x [B, d] -> scalar
    loss = loss + clm_weight * clm_loss(out.logits, clm_labels(batch["input_ids"], batch["attention_mask"]))

Both compute in float32 whatever the input dtype: a bf16 softmax over a batch or a 40k vocab
loses the small differences the gradient is made of. InfoNCE also turns autocast off for its own
body (:func:`lib.modeling.model.fp32_region`): under bf16 autocast (the GPU default, and the suite's
``bf16-mixed`` runs) a matmul casts its inputs to bf16 whatever ``.float()`` made of them, and at
temperature 0.05 the logits reach 16-20, where bf16 steps by 0.125.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.modeling.model import fp32_region

IGNORE_INDEX = -100  # the label value cross-entropy skips (PyTorch and HF convention)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; ``a[i]`` and ``b[i]`` are a positive pair.

    With ``u_i = a_i / |a_i|``, ``v_j = b_j / |b_j|`` and ``S_ij = u_i . v_j / t``::

        L = 1/2 * [ mean_i -log( e^{S_ii} / sum_j e^{S_ij} )      # a -> b: pick b_i among all b
                  + mean_j -log( e^{S_jj} / sum_i e^{S_ij} ) ]    # b -> a: pick a_j among all a

    No signal (all S equal) gives ``log B``; B orthonormal, perfectly aligned pairs give
    ``log(1 + (B - 1) e^{-1/t})``, so the temperature sets how hard the loss pushes.
    The negatives are the other rows of this batch only: under DDP each device sees its own
    batch unless the caller gathers vectors first (our stage-1 loop runs on one device).
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"info_nce expects two [B, d] tensors of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not temperature > 0:
        raise ValueError(f"info_nce temperature must be > 0, got {temperature}")
    with fp32_region(a):
        u = F.normalize(a.float(), dim=-1)
        v = F.normalize(b.float(), dim=-1)
        logits = u @ v.T / temperature
        targets = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def clm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token cross-entropy: position ``t`` predicts ``labels[t + 1]``; the shift is done here.

    ``L = mean over {t : labels[:, t+1] != ignore_index} of -log softmax(logits[:, t])[labels[:, t+1]]``,
    i.e. ``labels`` are aligned with ``input_ids`` exactly as for ``model(..., labels=labels)`` in HF,
    which computes the same loss internally. Use this one when the forward pass must not receive
    ``labels`` (e.g. a joint loss reusing one forward) or for batches built by :func:`clm_labels`.
    With no target token at all it returns 0 (still attached to the graph) instead of NaN, so a
    fully masked batch cannot poison a joint loss.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"clm_loss expects logits [B, T, V] and labels [B, T], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1)
    if not bool((target != ignore_index).any()):
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=ignore_index)


def clm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               bos_token_id: int | None = None, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Labels for :func:`clm_loss`: a copy of ``input_ids`` with ``IGNORE_INDEX`` where no loss is due.

    Masked out: padding (``attention_mask == 0``); every ``bos_token_id`` position, since in a packed
    row (several documents, each starting with BOS) predicting BOS means predicting a document
    boundary from the previous document's tail; and positions where ``loss_mask`` is 0 (e.g. the
    prompt in response-only instruction tuning).
    """
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    if bos_token_id is not None:
        labels[input_ids == bos_token_id] = IGNORE_INDEX
    if loss_mask is not None:
        labels[loss_mask == 0] = IGNORE_INDEX
    return labels
