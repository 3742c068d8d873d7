"""Large corpora through ``datasets``: tokenized once into the cache, packed into a memory-mapped
block file, read back with bounded memory by every later run and every process.

    blocks, report = cached_blocks(tok, "data/mono/ko.txt", block_size=2048)   # int32 [n, 2048], mmap

What :func:`lib.packing.pack_file` does in memory (a Python list per line, fine for a few MB),
done out of core for the real corpora: ``datasets.load_dataset("text")`` reads the file into Arrow,
``Dataset.map`` tokenizes it once (``[BOS] + ids + [EOS]`` per non-empty line) into the datasets
cache, keyed by the file and the tokenizer, and the flat token stream is cut into blocks written
chunk by chunk to ``blocks-<fingerprint>-<block_size>.int32`` next to the cache files. The
returned tensor maps that file: pages are read when a batch touches them and can be dropped by
the OS again, so resident memory does not grow with the corpus (``bench/corpus_memory.py``).
Under ``accelerate launch`` the main process does the work first and the others read its cache.
The blocks equal ``pack_file``'s exactly (tested).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lib.data import DataError

CHUNK_ROWS = 1_000         # lines per map batch and per cached record batch: bounds memory


def _encode_rows(batch: dict, tokenizer, bos: int, eos: int) -> dict:
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"ids": [[bos] + x + [eos] for x in ids]}


def tokenized(tokenizer, path: str | Path, cache_dir: str | Path | None = None, limit: int | None = None):
    """A ``datasets.Dataset`` with one ``ids`` row per non-empty line of ``path`` (cached)."""
    from datasets import load_dataset
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"the tokenizer has no {'BOS' if bos is None else 'EOS'} token; packing needs both")
    from datasets.exceptions import DatasetGenerationError
    try:
        ds = load_dataset("text", data_files=str(path), split="train",
                          cache_dir=str(cache_dir) if cache_dir else None)
    except DatasetGenerationError as e:
        bad = _first_undecodable_line(path)
        if bad is None:
            raise
        raise DataError(f"{path}, line {bad[0]}: not UTF-8 ({bad[1]}); convert the file to UTF-8") from e
    ds = ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True, batch_size=CHUNK_ROWS,
                   desc=f"non-empty lines of {path.name}")
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.map(_encode_rows, batched=True, batch_size=CHUNK_ROWS, writer_batch_size=CHUNK_ROWS, remove_columns=["text"],
                fn_kwargs={"tokenizer": tokenizer, "bos": bos, "eos": eos}, desc=f"tokenizing {path.name}")
    if len(ds) == 0:
        raise DataError(f"{path}: no text lines")
    return ds


def _first_undecodable_line(path: Path) -> tuple[int, str] | None:
    """(line number, reason) of the first line of ``path`` that is not UTF-8, reading line by line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, f"{e.reason} at byte {e.start}"
    return None


def _flat_chunks(ds):
    """The token stream of ``ds`` as int32 arrays, one Arrow record batch at a time, read from its
    cache files with plain reads (not memory-mapped: the pages then never count as ours)."""
    import pyarrow as pa
    for f in ds.cache_files:
        with pa.OSFile(f["filename"]) as src:
            for rb in pa.ipc.open_stream(src):
                col = rb.column(rb.schema.get_field_index("ids"))
                if len(col):
                    yield np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int32)


def _write_blocks(ds, target: Path, block_size: int) -> tuple[int, int]:
    """Write the full blocks of ``ds``'s stream to ``target`` (raw int32, atomically); returns
    (tokens, blocks). An existing ``target`` is reused: its token count is in ``.tokens`` beside it."""
    count = target.with_suffix(".tokens")
    if target.exists() and count.exists():
        total = int(count.read_text())
        return total, total // block_size
    total = sum(len(c) for c in _flat_chunks(ds))
    n_blocks = total // block_size
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    left = n_blocks * block_size
    with open(tmp, "wb") as out:                 # plain writes: the file's pages are not mapped here
        for chunk in _flat_chunks(ds):
            if left <= 0:
                break
            out.write(chunk[:left].tobytes())
            left -= min(len(chunk), left)
    count.write_text(str(total))
    tmp.rename(target)
    return total, n_blocks


def cached_blocks(tokenizer, path: str | Path, block_size: int, cache_dir: str | Path | None = None,
                  limit: int | None = None) -> tuple[torch.Tensor, dict]:
    """``[n_blocks, block_size]`` int32 blocks of ``path`` (memory-mapped) and their packing report."""
    from accelerate import PartialState
    from lib.packing import _check_block_size
    _check_block_size(block_size)
    with PartialState().main_process_first():      # one process tokenizes, the others reuse its cache
        ds = tokenized(tokenizer, path, cache_dir, limit)
        target = Path(ds.cache_files[0]["filename"]).parent / f"blocks-{ds._fingerprint}-{block_size}.int32"
        tokens, n_blocks = _write_blocks(ds, target, block_size)
    report = {"path": str(path), "docs": len(ds), "tokens": tokens, "block_size": block_size,
              "blocks": n_blocks, "dropped_tokens": tokens % block_size, "cache": str(target)}
    if n_blocks == 0:
        raise ValueError(f"{path}: its {tokens} tokens are shorter than one block of {block_size}; "
                         "give more text or a smaller block_size")
    # copy-on-write map: a writable view for torch, the file itself is never changed
    flat = np.memmap(target, dtype=np.int32, mode="c", shape=(n_blocks, block_size))
    return torch.from_numpy(flat), report
