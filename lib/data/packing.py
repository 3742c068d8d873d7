"""Token data for causal-LM training (stages 04 and 05): tokenize, pack, mix Ko/En by a ratio.

    docs = tokenize_lines(tok, read_lines("ko.txt"))        # [[BOS, ..., EOS], ...], one per line
    blocks_ko = pack(docs, block_size=512)                   # LongTensor [n_blocks, 512], no padding
    print(packing_report(docs, 512))                         # docs, tokens, blocks, dropped_tokens
    stream = MixedStream({"ko": blocks_ko, "en": blocks_en}, {"ko": 0.7, "en": 0.3},
                         batch_size=16, grad_accum=2, seed=0, bos_token_id=tok.bos_token_id)
    train(modules, stream.batch, loss_fn, spec, out_dir)     # batch(step, micro, rank, world)
    metrics["data"] = stream_stats(stream, spec.steps)       # tokens and passes per source

Packing concatenates the documents into one stream and cuts it into full blocks, so no position
is padding (``pad_naive`` is the one-document-per-row baseline it is compared with); a block
may start mid-document, which is what GPT-style pretraining does.

``packing`` says what a document sees in its block (:data:`PACKING_MODES`):

- ``concat`` (the default): the block is one sequence, so a document attends to the documents
  before it in the block, and positions run 0..T-1 across them (GPT-style);
- ``documents``: every document of the block is a sequence of its own: its position ids restart
  at 0 (:func:`document_positions`: at each BOS, and at the block's start for the piece of a
  document the block begins with), it attends only to itself, and its first token (BOS) is no
  target, so no loss crosses a boundary. The batch carries ``position_ids`` and the model is called
  without an attention mask: transformers then builds the block-diagonal causal mask from the
  position ids itself (``masking_utils.find_packed_sequence_indices``, sdpa / eager / flex) or
  runs flash-attention's variable-length kernel (:func:`lib.modeling.chunked_ce.lm_inputs`). Each
  document then gets the loss it has alone (``tests/test_doc_packing.py``). Documents are found by
  their BOS token, which every packed document starts with (:func:`tokenize_lines`).

A batch is a pure function of (step, micro): resuming at step k needs no loader state. Global
micro-batch ``g = step * grad_accum + micro`` holds rows ``[g*B, (g+1)*B)`` of an endless row
sequence. How many of the first ``N`` rows come from each source is a closed-form, non-decreasing
function of ``N`` (sequential rounding, sources in name order: source 1 gets ``round(N * r1)``,
source 2 gets ``round(rest * r2 / (1 - r1))`` of the rest, ...). So the composition is exact per
batch (two sources: ``floor`` or ``ceil`` of ``B * r``) and over any prefix of the run (two
sources: within half a row of ``N * r``), with no sampling noise. Source ``s`` hands out its
blocks in a seeded permutation, a new one per pass; the k-th block it hands out is
``perm(seed, s, k // n)[k % n]``, so a smaller source is cycled with every block seen once per
pass. The rows of a micro-batch are put in a seeded order, and rank ``r`` of ``w`` processes
takes rows ``r::w``: together the processes see exactly the rows one process would.
"""
from __future__ import annotations

import itertools
import math
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from lib.core.prompts import QA_MARKERS
from lib.core.readers import read_lines
from lib.data.corpus import CorpusSource, cached_blocks, check_block_size, encode_text
from lib.modeling.losses import clm_labels

# ----------------------------------------------------------------------------- documents

# A question line followed by its answer line is one document, newline kept: the prompt format
# of the multiple-choice evaluation (``Question: {q}\nAnswer:``), as the toy world writes its QA.


def qa_documents(lines: Sequence[str]) -> list[str]:
    """Documents of a text file: one per line, except that a ``Question: `` line directly followed
    by an ``Answer: `` line (or ``질문: `` / ``정답: ``) forms one two-line document."""
    docs, i = [], 0
    while i < len(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if any(lines[i].startswith(q) and nxt.startswith(a) for q, a in QA_MARKERS):
            docs.append(lines[i] + "\n" + nxt)
            i += 2
        else:
            docs.append(lines[i])
            i += 1
    return docs


def tokenize_lines(tokenizer, lines: Sequence[str], add_bos: bool = True, add_eos: bool = True,
                   chunk: int = 10_000) -> list[list[int]]:
    """One token-id list per line, ``[BOS] + ids + [EOS]``; batched calls of the fast tokenizer
    (:func:`lib.data.corpus.encode_text`: a literal ``<s>`` in a line is text, not a boundary)."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise ValueError(f"the tokenizer has no {'BOS' if add_bos and bos is None else 'EOS'} "
                         "token; pass add_bos=False / add_eos=False or use a Llama tokenizer")
    head, tail = [bos] if add_bos else [], [eos] if add_eos else []
    lines = list(lines)
    docs: list[list[int]] = []
    for i in range(0, len(lines), chunk):     # bounded memory on large corpora
        docs.extend(head + x + tail for x in encode_text(tokenizer, lines[i:i + chunk]))
    return docs


def pack(docs: Sequence[Sequence[int]], block_size: int, dtype: torch.dtype = torch.long
         ) -> torch.Tensor:
    """Documents concatenated into one stream, cut into ``[n_blocks, block_size]`` full blocks.

    The trailing ``total % block_size`` tokens are dropped (see :func:`packing_report`). ``dtype``
    ``torch.int32`` halves memory for big corpora; batches are ``long`` either way.
    """
    check_block_size(block_size)
    total = sum(len(d) for d in docs)
    flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64, count=total)
    n = total // block_size
    return torch.from_numpy(flat[:n * block_size].reshape(n, block_size)).to(dtype)


def packing_report(docs: Sequence[Sequence[int]], block_size: int) -> dict:
    """What :func:`pack` makes of ``docs``: counts of docs, tokens, blocks and dropped tokens."""
    check_block_size(block_size)
    total = sum(len(d) for d in docs)
    return {"docs": len(docs), "tokens": total, "block_size": block_size,
            "blocks": total // block_size, "dropped_tokens": total % block_size}


CACHE_MIN_BYTES = 32 * 2**20     # files this large go through lib.data.corpus (datasets cache, mmap)


def pack_file(tokenizer, path: str | Path, block_size: int, limit: int | None = None,
              dtype: torch.dtype = torch.long, cache: bool | str = "auto") -> tuple[torch.Tensor, dict]:
    """Blocks of a text file (one document per line, a QA pair of lines as one: :func:`qa_documents`)
    and their :func:`packing_report`.

    ``cache``: ``True`` tokenizes once through ``datasets`` into its cache and returns int32
    blocks memory-mapped from a file (:func:`lib.data.corpus.cached_blocks`: bounded memory, reused by
    later runs and other processes; same blocks); ``"auto"`` does so for files of 32 MiB or more;
    ``False`` tokenizes in memory. The cached path reads one document per line: it does not join
    QA pairs (the toy world's files, which have them, are far below the threshold).
    ``path`` may also be a :class:`lib.data.corpus.CorpusSource` (a corpus parameter parsed by
    :func:`lib.data.corpus.parse_corpus`): JSONL files and Hub splits always go through the cache.
    """
    if isinstance(path, CorpusSource):
        if path.kind != "text":
            if cache is False:
                raise ValueError(f"{path.describe()}: JSONL files and Hub datasets are packed through the cache only")
            return cached_blocks(tokenizer, path, block_size, limit=limit)
        path = path.path
    if cache is True or (cache == "auto" and Path(path).is_file() and Path(path).stat().st_size >= CACHE_MIN_BYTES):
        return cached_blocks(tokenizer, path, block_size, limit=limit)
    docs = tokenize_lines(tokenizer, qa_documents(read_lines(path, limit=limit)))
    report = packing_report(docs, block_size)
    if report["blocks"] == 0:
        raise ValueError(f"{path}: its {report['tokens']} tokens are shorter than one block of "
                         f"{block_size}; give more text or a smaller block_size")
    return pack(docs, block_size, dtype), {"path": str(path), **report}


def pad_naive(docs: Sequence[Sequence[int]], block_size: int, pad_id: int = 0) -> dict:
    """The baseline: one document per row, truncated to / right-padded up to ``block_size``.

    Returns ``{"input_ids", "attention_mask"}`` (``[n_docs, block_size]``).
    """
    check_block_size(block_size)
    ids = torch.full((len(docs), block_size), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), block_size), dtype=torch.long)
    for i, d in enumerate(docs):
        d = list(d)[:block_size]
        ids[i, :len(d)] = torch.tensor(d, dtype=torch.long)
        mask[i, :len(d)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def nonpad_fraction(batch_or_mask) -> float:
    """Share of positions that hold a real token: a batch dict (its ``attention_mask``) or a mask."""
    mask = batch_or_mask["attention_mask"] if isinstance(batch_or_mask, Mapping) else batch_or_mask
    mask = torch.as_tensor(mask)
    if mask.numel() == 0:
        raise ValueError("nonpad_fraction of an empty mask is undefined")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("nonpad_fraction expects an attention mask of 0/1 (or a batch dict); "
                         "got values other than 0 and 1: input_ids instead of the mask?")
    return float((mask != 0).sum()) / mask.numel()


# ----------------------------------------------------------------------------- documents in a block

PACKING_MODES = ("concat", "documents")


def check_packing(mode: str) -> None:
    if mode not in PACKING_MODES:
        raise ValueError(f"packing must be one of {', '.join(PACKING_MODES)}, got {mode!r}")


def document_positions(input_ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """Position ids that restart at 0 at every ``bos_token_id`` and at the start of every row
    (``[B, T]`` long, like ``input_ids``): ``[[5, 6, BOS, 7, BOS, 8]] -> [[0, 1, 0, 1, 0, 1]]``."""
    starts = input_ids == bos_token_id
    starts[:, 0] = True
    idx = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


def documents_per_row(input_ids: torch.Tensor, bos_token_id: int) -> float:
    """Mean number of documents (or pieces of one) a row holds: its BOS tokens, plus one where the
    row begins mid-document."""
    return float(((input_ids == bos_token_id).sum(1) + (input_ids[:, 0] != bos_token_id)).float().mean())


# ----------------------------------------------------------------------------- mixing

class MixedStream:
    """Deterministic micro-batches of packed blocks from one or more sources, mixed by ratio.

    ``blocks``: ``{name: [n_blocks, T] tensor}``; ``ratios``: ``{name: share}`` summing to 1
    (may be omitted with one source); ``batch_size``: rows of one global micro-batch (all ranks
    together); ``bos_token_id``: when given, BOS positions get no loss (see
    :func:`lib.modeling.losses.clm_labels`); when None every position is a target. ``packing``:
    ``concat`` or ``documents`` (module docstring; ``documents`` needs ``bos_token_id`` and adds
    ``position_ids`` to every batch).
    """

    def __init__(self, blocks: Mapping[str, torch.Tensor], ratios: Mapping[str, float] | None = None,
                 batch_size: int = 8, grad_accum: int = 1, seed: int = 0,
                 bos_token_id: int | None = None, packing: str = "concat"):
        if not blocks:
            raise ValueError("MixedStream needs at least one source of blocks")
        check_packing(packing)
        if packing == "documents" and bos_token_id is None:
            raise ValueError("packing 'documents' finds documents by their BOS token: pass bos_token_id")
        if ratios is None:
            if len(blocks) != 1:
                raise ValueError(f"ratios are required with several sources ({sorted(blocks)})")
            ratios = {next(iter(blocks)): 1.0}
        unknown, missing = sorted(set(ratios) - set(blocks)), sorted(set(blocks) - set(ratios))
        if unknown:
            raise ValueError(f"ratios name unknown source(s) {unknown}; the sources are {sorted(blocks)}")
        if missing:
            raise ValueError(f"no ratio for source(s) {missing}; give every source a ratio "
                             "(0 to leave it out)")
        if any(not (float(r) >= 0) for r in ratios.values()):
            raise ValueError(f"ratios must be >= 0, got {dict(ratios)}")
        total = sum(float(r) for r in ratios.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1, got {dict(ratios)} (sum {total:.6g})")
        if batch_size < 1 or grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {batch_size}, {grad_accum}")
        self.names = sorted(blocks)                     # name order fixes the apportionment
        widths = set()
        for name in self.names:
            b = blocks[name]
            if not isinstance(b, torch.Tensor) or b.dim() != 2:
                raise ValueError(f"source {name!r}: expected a 2-D tensor of blocks from pack(), "
                                 f"got {type(b).__name__} {tuple(getattr(b, 'shape', ()))}")
            check_block_size(b.shape[1])
            if b.shape[0] == 0:
                raise ValueError(f"source {name!r} has no blocks: its text is shorter than one "
                                 f"block of {b.shape[1]} tokens; give more text or a smaller block_size")
            widths.add(b.shape[1])
        if len(widths) > 1:
            raise ValueError(f"sources have different block sizes: "
                             f"{ {n: blocks[n].shape[1] for n in self.names} }")
        self.blocks = {n: blocks[n] for n in self.names}
        self.ratios = {n: float(ratios[n]) / total for n in self.names}
        self.block_size = widths.pop()
        self.batch_size, self.grad_accum, self.seed = int(batch_size), int(grad_accum), int(seed)
        self.bos_token_id, self.packing = bos_token_id, packing
        self._perms: OrderedDict = OrderedDict()

    def __repr__(self) -> str:
        srcs = ", ".join(f"{n}: {len(self.blocks[n])} blocks x {self.ratios[n]:.3g}" for n in self.names)
        return (f"MixedStream({srcs}; batch_size={self.batch_size}, grad_accum={self.grad_accum}, "
                f"block_size={self.block_size}, seed={self.seed}, packing={self.packing})")

    # --- the row plan, all closed-form in the global row index
    def rows_before(self, n_rows: int) -> dict[str, int]:
        """How many of the first ``n_rows`` rows of the run come from each source."""
        left, rest, out = int(n_rows), 1.0, {}
        for name in self.names[:-1]:
            r = self.ratios[name]
            c = min(left, math.floor(left * (r / rest) + 0.5)) if rest > 0 else 0
            out[name], left, rest = c, left - c, rest - r
        out[self.names[-1]] = left
        return out

    def _perm(self, i: int, epoch: int) -> np.ndarray:
        key = (i, epoch)
        if key not in self._perms:
            name = self.names[i]
            rng = np.random.default_rng([self.seed, 1, zlib.crc32(name.encode()), epoch])
            self._perms[key] = rng.permutation(len(self.blocks[name]))
            if len(self._perms) > 4 * len(self.names):   # a pass or two per source is all we read
                self._perms.popitem(last=False)
        self._perms.move_to_end(key)
        return self._perms[key]

    def source_order(self, name: str, start: int, stop: int) -> np.ndarray:
        """Block indices that source ``name`` hands out as its ``start``-th to ``stop-1``-th rows."""
        i, n = self.names.index(name), len(self.blocks[name])
        ks = np.arange(start, stop)
        out = np.empty(len(ks), dtype=np.int64)
        for epoch in np.unique(ks // n):
            sel = ks // n == epoch
            out[sel] = self._perm(i, int(epoch))[ks[sel] % n]
        return out

    def plan(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(source index, block index)`` of every row of the global micro-batch, in row order."""
        if step < 0 or not 0 <= micro < self.grad_accum:
            raise ValueError(f"need step >= 0 and 0 <= micro < grad_accum={self.grad_accum}, "
                             f"got step={step}, micro={micro}")
        g = step * self.grad_accum + micro
        lo, hi = self.rows_before(g * self.batch_size), self.rows_before((g + 1) * self.batch_size)
        src = np.concatenate([np.full(hi[n] - lo[n], i) for i, n in enumerate(self.names)])
        idx = np.concatenate([self.source_order(n, lo[n], hi[n]) for n in self.names])
        order = np.random.default_rng([self.seed, 2, g]).permutation(self.batch_size)
        return src[order].astype(np.int64), idx[order]

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict:
        """This rank's rows of micro-batch ``micro`` of optimizer step ``step``.

        ``{"input_ids", "attention_mask", "labels"}`` are ``[batch_size / world, block_size]``
        long tensors, and so is ``"position_ids"`` with ``packing="documents"``; ``"source"`` holds
        each row's index into ``self.names``.
        """
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over {world} "
                             "processes; pick a multiple of the number of processes")
        src, idx = self.plan(step, micro)
        src, idx = torch.from_numpy(src[rank::world]), torch.from_numpy(idx[rank::world])
        ids = torch.empty((len(src), self.block_size), dtype=torch.long)
        for i, name in enumerate(self.names):
            rows = torch.nonzero(src == i).flatten()
            # index_select: plain advanced indexing of a big tensor is ~1000x slower here
            ids.index_copy_(0, rows, self.blocks[name].index_select(0, idx[rows]).long())
        mask = torch.ones_like(ids)
        out = {"input_ids": ids, "attention_mask": mask,
               "labels": clm_labels(ids, mask, bos_token_id=self.bos_token_id), "source": src}
        if self.packing == "documents":
            out["position_ids"] = document_positions(ids, self.bos_token_id)
        return out

    __call__ = batch

    def epochs_seen(self, steps: int) -> dict[str, float]:
        """Passes over each source after ``steps`` optimizer steps (2.5: read two and a half times)."""
        rows = self.rows_before(steps * self.grad_accum * self.batch_size)
        return {n: rows[n] / len(self.blocks[n]) for n in self.names}


def stream_stats(stream: MixedStream, steps: int) -> dict:
    """Per-source rows, tokens, realised ratio, epochs and cycles over ``steps`` steps (for metrics.json).

    ``cycles``: how many times the source was started over after running out (0: never).
    """
    total = steps * stream.grad_accum * stream.batch_size
    rows = stream.rows_before(total)
    epochs = stream.epochs_seen(steps)
    sources = {n: {"blocks": len(stream.blocks[n]), "ratio": stream.ratios[n], "rows": rows[n],
                   "tokens": rows[n] * stream.block_size,
                   "realised_ratio": rows[n] / total if total else 0.0,
                   "epochs": epochs[n], "cycles": max(0, math.ceil(epochs[n]) - 1)}
               for n in stream.names}
    return {"steps": steps, "rows": total, "tokens": total * stream.block_size,
            "block_size": stream.block_size, "batch_size": stream.batch_size,
            "grad_accum": stream.grad_accum, "seed": stream.seed, "sources": sources}
