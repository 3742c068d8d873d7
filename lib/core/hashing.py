"""Hashes that decide whether a stored result still holds: of a stage's parameters (``DONE``,
shared stages, resumable checkpoints), of any JSON-able value (07's stored results), of a file's bytes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RESERVED = ("run",)        # where a stage lives is not part of what it computes


def config_hash(values: dict[str, Any]) -> str:
    """A stable hash of a stage's parameters; ``run`` (where it lives) is not part of the config."""
    body = {k: v for k, v in values.items() if k not in RESERVED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (keys sorted; 07's stored results are keyed by it)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
