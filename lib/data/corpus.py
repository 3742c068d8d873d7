"""Large corpora through ``datasets``: tokenized once into the cache, packed into a memory-mapped
block file, read back with bounded memory by every later run and every process.

    blocks, report = cached_blocks(tok, "data/mono/ko.txt", block_size=2048)   # int32 [n, 2048], mmap

What :func:`lib.data.packing.pack_file` does in memory (a Python list per line, fine for a few MB),
done out of core for the real corpora: ``datasets.load_dataset("text")`` reads the file into Arrow,
``Dataset.map`` tokenizes it once (``[BOS] + ids + [EOS]`` per non-empty line) into the datasets
cache, keyed by the file and the tokenizer, and the flat token stream is cut into blocks written
chunk by chunk to ``blocks-<fingerprint>-<block_size>.int32`` next to the cache files. The
returned tensor maps that file: pages are read when a batch touches them and can be dropped by
the OS again, so resident memory does not grow with the corpus (``bench/corpus_memory.py``).
Under ``accelerate launch`` the main process does the work first and the others read its cache.
The blocks equal ``pack_file``'s exactly (tested).

A corpus parameter (04 ``text``, 05 ``ko_text``/``en_text``, 03 ``clm_text``) names one of
(:func:`parse_corpus`)::

    data/mono/ko.txt                              # a text file, one document a line
    data/mono/ko.jsonl                            # JSONL, one document a record, text in "text"
    data/mono/ko.jsonl#content                    # ... text in "content"
    hub:wikimedia/wikipedia/20231101.ko/train     # a Hub dataset split, text in "text"
    hub:owner/name//train#body                    # no config; text in "body"

Text files are packed in memory when small (``pack_file``); JSONL files and Hub splits always
go through the cache here. A Hub id is loaded by ``datasets.load_dataset`` (the network or its
offline cache); a local dataset folder given as ``hub:/path/to/folder//train`` takes the same path.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState

from lib.core import paths
from lib.core.readers import DataError
from lib.core.sources import is_hub, parse_hub

CHUNK_ROWS = 1_000         # lines per map batch and per cached record batch: bounds memory


def check_block_size(block_size: int) -> None:
    """A causal LM needs a token and its successor: blocks of at least 2 tokens."""
    if int(block_size) < 2:
        raise ValueError(f"block_size must be >= 2 (a causal LM needs a token and its successor), "
                         f"got {block_size}")


def encode_text(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of training text, no BOS/EOS added, and a special token's *string* in the text
    (``<s>``, ``</s>``) read as text: otherwise a literal ``<s>`` in a document becomes the BOS id,
    which splits the document under ``packing: documents`` and trains on a boundary that is not one."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode_rows(batch: dict, tokenizer, bos: int, eos: int) -> dict:
    return {"ids": [[bos] + x + [eos] for x in encode_text(tokenizer, batch["text"])]}


JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class CorpusSource:
    """A training corpus: a local text or JSONL file, or a Hub dataset split (:func:`parse_corpus`)."""
    spec: str                       # as written in the parameter
    path: Path | None = None        # local file, absolute
    dataset: str | None = None      # Hub dataset id (or a local dataset folder)
    config: str | None = None
    split: str | None = None
    field: str = "text"             # the text field of a JSONL record or a dataset row

    @property
    def kind(self) -> str:
        if self.path is None:
            return "hub"
        return "jsonl" if self.path.suffix in JSON_SUFFIXES else "text"

    def describe(self) -> str:
        if self.path is None:
            return f"hub:{self.dataset}/{self.config or ''}/{self.split}#{self.field}"
        return str(self.path) + (f"#{self.field}" if self.kind == "jsonl" else "")


def parse_corpus(value: str | Path, run: str | Path = ".") -> CorpusSource:
    """A corpus parameter as a :class:`CorpusSource` (the forms are in the module docstring).
    Placeholders are expanded and relative paths taken from the repository root; whether the
    file exists is checked when it is read (and by ``check``)."""
    if isinstance(value, Path):
        return CorpusSource(str(value), path=value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"a corpus must be a file path or 'hub:<dataset>/<config>/<split>', got {value!r}")
    if is_hub(value):
        try:
            dataset, config, split, field = parse_hub(value, with_field=True)
        except ValueError as e:
            raise DataError(str(e)) from None
        return CorpusSource(value, dataset=dataset, config=config, split=split, field=field or "text")
    base, sep, field = value.rpartition("#")
    if sep and Path(base).suffix in JSON_SUFFIXES:
        return CorpusSource(value, path=paths.resolve_path(base, run), field=field or "text")
    return CorpusSource(value, path=paths.resolve_path(value, run))


def load_rows(src: CorpusSource, cache_dir: str | None):
    """The raw ``datasets.Dataset`` of ``src`` with one ``text`` column."""
    from datasets import load_dataset  # datasets: ~0.6 s to import; check reads this module without it
    from datasets.exceptions import DatasetGenerationError  # see load_dataset above
    if src.kind == "hub":
        try:
            ds = load_dataset(src.dataset, src.config, split=src.split, cache_dir=cache_dir)
        except Exception as e:       # no network, a wrong id or split: say which corpus and why
            raise DataError(f"{src.spec}: could not load the dataset ({type(e).__name__}: {e}); "
                            "offline, download it first or point the parameter at a local file") from e
    else:
        if not src.path.is_file():
            raise DataError(f"{src.path}: file not found" + (f" (from {src.spec!r})" if src.spec != str(src.path) else ""))
        builder = "json" if src.kind == "jsonl" else "text"
        try:
            ds = load_dataset(builder, data_files=str(src.path), split="train", cache_dir=cache_dir)
        except DatasetGenerationError as e:
            bad = _first_undecodable_line(src.path)
            if bad is not None:
                raise DataError(f"{src.path}, line {bad[0]}: not UTF-8 ({bad[1]}); convert the file to UTF-8") from e
            if builder == "json":
                raise DataError(f"{src.path}: not JSONL ({_first_bad_json_line(src.path)})") from e
            raise
    if src.kind == "text":
        return ds
    if src.field not in ds.column_names:
        raise DataError(f"{src.describe()}: no field {src.field!r} (fields: {', '.join(ds.column_names)}); "
                        f"name the text field after '#'")
    ds = ds.select_columns([src.field])
    return ds.rename_column(src.field, "text") if src.field != "text" else ds


def _first_bad_json_line(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"line {n}: {e.msg}, column {e.colno}"
    return "no record could be read"


def tokenized(tokenizer, path: str | Path | CorpusSource, cache_dir: str | Path | None = None, limit: int | None = None):
    """A ``datasets.Dataset`` with one ``ids`` row per non-empty document of ``path`` (a text
    file's lines, a JSONL file's records, a Hub split's rows; cached)."""
    src = path if isinstance(path, CorpusSource) else parse_corpus(Path(path))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"the tokenizer has no {'BOS' if bos is None else 'EOS'} token; packing needs both")
    ds = load_rows(src, str(cache_dir) if cache_dir else None)
    name = src.path.name if src.path is not None else src.dataset
    ds = ds.filter(lambda b: [isinstance(t, str) and bool(t.strip()) for t in b["text"]], batched=True,
                   batch_size=CHUNK_ROWS, desc=f"non-empty documents of {name}")
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.map(_encode_rows, batched=True, batch_size=CHUNK_ROWS, writer_batch_size=CHUNK_ROWS, remove_columns=["text"],
                fn_kwargs={"tokenizer": tokenizer, "bos": bos, "eos": eos}, desc=f"tokenizing {name}")
    if len(ds) == 0:
        raise DataError(f"{src.describe()}: no text " + ("lines" if src.kind == "text" else "documents"))
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
    import pyarrow as pa  # pyarrow: ~0.1 s to import; only when blocks are written (datasets loaded it)
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


def cached_blocks(tokenizer, path: str | Path | CorpusSource, block_size: int, cache_dir: str | Path | None = None,
                  limit: int | None = None) -> tuple[torch.Tensor, dict]:
    """``[n_blocks, block_size]`` int32 blocks of ``path`` (memory-mapped) and their packing report."""
    src = path if isinstance(path, CorpusSource) else parse_corpus(Path(path))
    check_block_size(block_size)
    with PartialState().main_process_first():      # one process tokenizes, the others reuse its cache
        ds = tokenized(tokenizer, src, cache_dir, limit)
        target = Path(ds.cache_files[0]["filename"]).parent / f"blocks-{ds._fingerprint}-{block_size}.int32"
        tokens, n_blocks = _write_blocks(ds, target, block_size)
    report = {"path": src.describe() if src.kind != "text" else str(src.path), "docs": len(ds), "tokens": tokens, "block_size": block_size,
              "blocks": n_blocks, "dropped_tokens": tokens % block_size, "cache": str(target)}
    if n_blocks == 0:
        raise ValueError(f"{src.describe()}: its {tokens} tokens are shorter than one block of {block_size}; "
                         "give more text or a smaller block_size")
    # copy-on-write map: a writable view for torch, the file itself is never changed
    flat = np.memmap(target, dtype=np.int32, mode="c", shape=(n_blocks, block_size))
    return torch.from_numpy(flat), report
