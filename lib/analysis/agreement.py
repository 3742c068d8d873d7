"""Does the model give the same answer in English and in Korean? Pairing the two languages'
predictions of a paired benchmark (arc_challenge / ko_arc_challenge, Belebele eng_Latn / kor_Hang,
the toy-world cells) by item id, and the flat table rows of 08::

    from lib.analysis import agreement as ag
    from lib.core.stats import paired_metrics
    from lib.eval.samples import read_lm_eval_samples
    en = read_lm_eval_samples("samples_arc_challenge_<date>.jsonl")
    ko = read_lm_eval_samples("samples_ko_arc_challenge_<date>.jsonl")
    items = ag.join_by_id(en, ko, pred_key="pred_norm")     # or "pred" for raw argmax
    m = paired_metrics(items, n_boot=1000, seed=0)         # {"agreement": .., "agreement_ci": [lo, hi], ..}
    row = ag.summary_row("base", "00", "arc", m)

The metrics themselves (agreement, kappa, bootstrap) are :mod:`lib.core.stats`; reading lm-eval's
logs is :mod:`lib.eval.samples`.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

from lib.core.stats import Item
from lib.eval.samples import hashable

MAX_LISTED = 5  # ids named in an error message


def _listed(ids: Sequence) -> str:
    more = f" ... and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(repr(i) for i in ids[:MAX_LISTED]) + more


def _by_id(records: Iterable[Mapping] | Mapping[Hashable, Mapping], lang: str, pred_key: str,
           problems: list[str]) -> dict[Hashable, tuple[Any, Any]]:
    """``{id: (gold, pred)}`` from a list of dicts with ``id`` or from an ``{id: record}`` mapping."""
    if isinstance(records, Mapping):
        pairs = list(records.items())
    else:
        pairs = []
        for i, r in enumerate(records):
            if "id" not in r:
                raise ValueError(f"{lang} record {i} has no 'id' key (keys: {sorted(r)})")
            pairs.append((r["id"], r))
    out: dict[Hashable, tuple[Any, Any]] = {}
    dups: list[Hashable] = []
    for i, (key, r) in enumerate(pairs):
        missing = [k for k in ("gold", pred_key) if k not in r]
        if missing:
            raise ValueError(f"{lang} record {i} (id {key!r}) lacks {missing}; it has {sorted(r)}")
        key = hashable(key)
        if key in out:
            dups.append(key)
        out[key] = (r["gold"], r[pred_key])
    if dups:
        problems.append(f"duplicate ids in the {lang} records ({len(dups)}): {_listed(dups)}")
    return out


def join_by_id(en_records: Iterable[Mapping] | Mapping, ko_records: Iterable[Mapping] | Mapping,
               pred_key: str = "pred") -> list[Item]:
    """Pair English and Korean records by id (English order). Records are dicts with ``id``,
    ``gold`` and ``pred_key``, or ``{id: {gold, pred, ...}}`` as :func:`read_lm_eval_samples`
    returns. Raises one ValueError listing every problem: ids in one language only, duplicate ids,
    gold answers that differ between the languages."""
    problems: list[str] = []
    en = _by_id(en_records, "English", pred_key, problems)
    ko = _by_id(ko_records, "Korean", pred_key, problems)
    only_en = [k for k in en if k not in ko]
    only_ko = [k for k in ko if k not in en]
    if only_en:
        problems.append(f"{len(only_en)} ids only in English: {_listed(only_en)}")
    if only_ko:
        problems.append(f"{len(only_ko)} ids only in Korean: {_listed(only_ko)}")
    differ = [k for k in en if k in ko and en[k][0] != ko[k][0]]
    if differ:
        shown = "; ".join(f"{k!r}: en={en[k][0]!r} ko={ko[k][0]!r}" for k in differ[:MAX_LISTED])
        problems.append(f"gold answer differs between English and Korean for {len(differ)} ids: {shown}"
                        + (" ..." if len(differ) > MAX_LISTED else ""))
    if problems:
        raise ValueError("cannot pair the English and Korean predictions: " + " | ".join(problems)
                         + ". Both files must come from the same paired task, same items, same order"
                           " of options.")
    return [Item(k, en[k][0], en[k][1], ko[k][1]) for k in en]


# ---------------------------------------------------------------------------- tables


def summary_row(model: str, stage: str, task: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Flat table row: model, stage, task, then each metric; ``x_ci`` becomes ``x_lo``, ``x_hi``."""
    row: dict[str, Any] = {"model": model, "stage": stage, "task": task}
    for k, v in metrics.items():
        if k.endswith("_ci"):
            if not (isinstance(v, (list, tuple)) and len(v) == 2):
                raise ValueError(f"metric {k!r} should be [lo, hi], got {v!r}")
            row[f"{k[:-3]}_lo"], row[f"{k[:-3]}_hi"] = v
        elif isinstance(v, (Mapping, list, tuple)):
            raise ValueError(f"metric {k!r} is not a scalar ({type(v).__name__}); flatten it first")
        else:
            row[k] = v
    return row
