"""Parallel pairs as training batches (stage 03, and 05's kept alignment term): the pairs of each
micro-batch as a pure function of the step (:class:`PairBatches`: exact resume, no loader state),
texts tokenized once, and batch rows cut to their longest member."""
from __future__ import annotations

import numpy as np
import torch

from lib.modeling.represent import encode_batch


class PairBatches:
    """Pair indices of every micro-batch, a pure function of the step (exact resume, no loader state).

    Global micro-batch ``g = step * grad_accum + micro`` is slice ``g % per_epoch`` of epoch
    ``g // per_epoch``'s seeded permutation. The last ``n % batch_size`` pairs of each permutation
    are dropped (others next epoch), so a batch never holds a pair twice: a duplicate would be its
    own negative. More steps than one epoch simply cycle the pairs.

    ``group_by_length=k`` (with ``lengths``, one per pair) cuts padding: each run of ``k`` batches
    of the permutation is sorted by length before it is cut into batches, and the batches are then
    shuffled (seeded). Every pair still comes once per epoch; a pair's negatives are then pairs of
    similar length. ``0`` keeps the plain permutation.
    """

    def __init__(self, n_pairs: int, batch_size: int, grad_accum: int = 1, seed: int = 0,
                 group_by_length: int = 0, lengths=None):
        if group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0 (0: off), got {group_by_length}")
        if group_by_length and (lengths is None or len(lengths) != n_pairs):
            raise ValueError("group_by_length needs one length per pair")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2: InfoNCE needs in-batch negatives, got {batch_size}")
        if n_pairs < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {n_pairs} training pairs; "
                             "lower batch_size or give more pairs (max_pairs 0 reads all)")
        self.n, self.batch_size, self.grad_accum, self.seed = n_pairs, batch_size, grad_accum, seed
        self.per_epoch = n_pairs // batch_size
        self.group, self.lengths = group_by_length, None if lengths is None else np.asarray(lengths)
        self._perm: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, 3, epoch])
            perm = rng.permutation(self.n)
            if self.group:
                perm = self._grouped(perm, rng)
            self._perm = (epoch, perm)
        return self._perm[1]

    def _grouped(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        used, tail = perm[:self.per_epoch * self.batch_size], perm[self.per_epoch * self.batch_size:]
        pool = self.group * self.batch_size
        chunks = [used[i:i + pool] for i in range(0, len(used), pool)]
        ordered = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = ordered.reshape(self.per_epoch, self.batch_size)[rng.permutation(self.per_epoch)]
        return np.concatenate([batches.reshape(-1), tail])

    def indices(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> np.ndarray:
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} does not split over {world} processes")
        g = step * self.grad_accum + micro
        k = g % self.per_epoch
        rows = self.permutation(g // self.per_epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return rows[rank::world]

    def epochs(self, steps: int) -> float:
        return steps * self.grad_accum * self.batch_size / self.n


def encode_texts(tok, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """All texts tokenized once (int32 ids, int8 mask: a million pairs stay well under 1 GB)."""
    enc = encode_batch(tok, texts, max_len)
    return {"input_ids": enc["input_ids"].int(), "attention_mask": enc["attention_mask"].to(torch.int8)}


def pair_lengths(enc: dict[str, dict[str, torch.Tensor]]) -> np.ndarray:
    """Per pair, the longer of its two sentences in tokens: the width it adds to a batch."""
    return torch.maximum(enc["ko"]["attention_mask"].sum(1), enc["en"]["attention_mask"].sum(1)).numpy()


def rows_of(enc: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of an :func:`encode_texts` set as long tensors, cut to the longest row of the batch."""
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    mask = enc["attention_mask"].index_select(0, idx).long()
    width = int(mask.sum(dim=1).max())
    return {"input_ids": enc["input_ids"].index_select(0, idx)[:, :width].long(), "attention_mask": mask[:, :width]}


def stack_batches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Row-concatenate right-padded batches of different widths (Korean and English in one pass)."""
    width = max(p["input_ids"].shape[1] for p in parts)
    return {k: torch.cat([torch.nn.functional.pad(p[k], (0, width - p[k].shape[1])) for p in parts])
            for k in parts[0]}
