"""Text readers that say exactly what they reject: the file and the line.

    lines = read_lines("ko.txt", limit=1000)
    ko, en = read_parallel("train.ko", "train.en")
"""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file and the line."""


def read_lines(path: str | Path, limit: int | None = None, skip_empty: bool = True) -> list[str]:
    """Lines of a UTF-8 text file (newlines and a leading byte-order mark stripped). Empty lines
    are skipped or rejected."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out: list[str] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                if n == 1:
                    line = line.removeprefix("\ufeff")     # a UTF-8 byte-order mark is not text
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {n}: not UTF-8 ({e.reason} at byte {e.start}); "
                                "convert the file to UTF-8") from None
            if not line.strip():
                if skip_empty:
                    continue
                raise DataError(f"{path}, line {n}: empty line (every line must hold text)")
            out.append(line)
            if limit and len(out) >= limit:
                break
    if not out:
        raise DataError(f"{path}: no text lines")
    return out


def read_parallel(ko_path: str | Path, en_path: str | Path, limit: int | None = None
                  ) -> tuple[list[str], list[str]]:
    """Line-aligned Korean/English files: same number of lines, no empty line on either side."""
    ko = read_lines(ko_path, skip_empty=False)
    en = read_lines(en_path, skip_empty=False)
    if len(ko) != len(en):
        raise DataError(f"misaligned parallel files: {ko_path} has {len(ko)} lines but {en_path} "
                        f"has {len(en)}; line i of one must translate line i of the other")
    return (ko[:limit], en[:limit]) if limit else (ko, en)
