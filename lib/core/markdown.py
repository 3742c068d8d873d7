"""Markdown pipe tables from rows of dicts (07's results, 08's summaries, grid tables).

    print(to_markdown([{"model": "base", "kappa": 0.4123}], digits=3))
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np


def cell(v: Any, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return "n/a" if math.isnan(v) else f"{float(v):.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(cell(x, digits) for x in v) + "]"
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                digits: int = 3) -> str:
    """Pipe table: floats with ``digits`` decimals, NaN as ``n/a``, numeric columns right-aligned.
    ``columns`` defaults to every key, in first-seen order; missing values are empty cells."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    if not columns:
        raise ValueError("no columns to show: pass rows or columns")
    numeric = [all(isinstance(r.get(c), numbers.Real) and not isinstance(r.get(c), bool)
                   for r in rows if r.get(c) is not None) and any(r.get(c) is not None for r in rows)
               for c in columns]
    lines = ["| " + " | ".join(cell(c, digits) for c in columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
