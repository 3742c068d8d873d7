"""Writing stage outputs safely: every file is written to a temp path and renamed into place.

``finish(cfg, metrics)`` is the last call of every notebook: it writes ``metrics.json`` and then
``DONE`` (holding the config hash), so a stage folder without ``DONE`` is unfinished by definition.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _clean(obj: Any) -> Any:
    """Make numpy/torch scalars and NaN JSON-friendly (NaN -> null, as strict JSON requires)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:             # disk full, interrupted: leave no half-written temp file
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``final``; on success it replaces ``final`` in one rename.

    A non-empty ``final`` is only replaced with ``overwrite=True``; on error the temp folder is
    removed and ``final`` is untouched.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final} already exists and is not empty; refusing to overwrite it")
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
