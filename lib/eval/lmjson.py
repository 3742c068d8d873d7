"""lm-eval's results as 07 stores them: JSON written the way lm-eval writes it, and a results dict
cut down to some of its tasks (07 stores one pair's, or one extra task's, results per file)."""
from __future__ import annotations

import json
from typing import Any, Mapping

from lm_eval.utils import handle_non_serializable


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON as lm-eval writes it (dtypes and other objects as strings)."""
    return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False, indent=indent)


def restricted(res: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
    """lm-eval's results dict restricted to some tasks (per-task sections filtered, samples left out)."""
    out = {}
    for k, v in res.items():
        if k == "samples":
            continue
        if isinstance(v, Mapping) and names & set(v):
            v = {t: x for t, x in v.items() if t in names}
        out[k] = v
    return out
