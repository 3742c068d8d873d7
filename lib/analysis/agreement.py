"""Does the model give the same answer in English and in Korean? Paired-benchmark metrics.

Each benchmark pair (arc_challenge / ko_arc_challenge, Belebele eng_Latn / kor_Hang, the toy-world
pair) asks the same multiple-choice questions, with the same option order, in both languages. From
per-item predictions in both languages this module computes accuracy per language, the agreement
rate (same option picked in both languages), Cohen's kappa between the two prediction vectors, the
both-right / both-wrong-same / both-wrong-different / only-one-right split, and seeded bootstrap
intervals; then flat table rows and a Markdown table for notebook 08::

    from lib.analysis import agreement as ag
    en = ag.read_lm_eval_samples("samples_arc_challenge_<date>.jsonl")
    ko = ag.read_lm_eval_samples("samples_ko_arc_challenge_<date>.jsonl")
    items = ag.join_by_id(en, ko, pred_key="pred_norm")     # or "pred" for raw argmax
    m = ag.paired_metrics(items, n_boot=1000, seed=0)      # {"agreement": .., "agreement_ci": [lo, hi], ..}
    print(ag.to_markdown([ag.summary_row("base", "00", "arc", m)]))

Conventions:
- ``pred_norm`` mirrors lm-eval 0.4's ``acc_norm``: log-likelihood divided by the *character*
  length (``len(str)``) of the choice text without the target delimiter. (lm-eval's separate
  ``acc_bytes`` divides by the UTF-8 byte length: ``length_unit="bytes"``.) The unit matters only
  when one item's choices mix scripts: a Hangul syllable is 1 character but 3 bytes.
- Ties go to the first option, as ``np.argmax`` (and lm-eval) does.
- Kappa is ``nan`` when the expected agreement is 1 (both languages always pick one and the same
  option): chance-corrected agreement is then 0/0, and a model that answers "A" to everything should
  not be credited with kappa 1. Bootstrap resamples where kappa is undefined are left out of its CI.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

SPLITS = ("both_correct", "both_wrong_same", "both_wrong_different", "only_en_correct", "only_ko_correct")
CI_METRICS = ("acc_en", "acc_ko", "agreement", "kappa")
MAX_LISTED = 5  # ids named in an error message


@dataclass(frozen=True)
class Item:
    """One question answered in both languages; labels are option indices (or any hashable)."""
    id: Hashable
    gold: Any
    pred_en: Any
    pred_ko: Any


def _listed(ids: Sequence) -> str:
    more = f" ... and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(repr(i) for i in ids[:MAX_LISTED]) + more


def _hashable(x: Any) -> Hashable:
    return tuple(_hashable(v) for v in x) if isinstance(x, list) else x  # JSON turns tuples into lists


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
        key = _hashable(key)
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


# ---------------------------------------------------------------------------- predictions


def choice_length(text: str, unit: str = "chars") -> int:
    """Length used for ``pred_norm``: characters (lm-eval ``acc_norm``) or UTF-8 bytes (``acc_bytes``)."""
    if unit == "chars":
        return len(text)
    if unit == "bytes":
        return len(text.encode("utf-8"))
    raise ValueError(f"length unit must be 'chars' or 'bytes', got {unit!r}")


def predictions_from_logliks(logliks: Sequence[float],
                             choice_lengths: Sequence[int] | None = None) -> tuple[int, int]:
    """``(argmax loglik, argmax loglik / length)``; without lengths both are the raw argmax."""
    ll = np.asarray(logliks, dtype=float)
    if ll.ndim != 1 or ll.size == 0 or np.isnan(ll).any():
        raise ValueError(f"need a non-empty list of log-likelihoods without NaN, got {logliks!r}")
    pred = int(np.argmax(ll))
    if choice_lengths is None:
        return pred, pred
    lengths = np.asarray(choice_lengths, dtype=float)
    if lengths.shape != ll.shape or (lengths <= 0).any():
        raise ValueError(f"need one positive length per choice: {len(ll)} log-likelihoods, "
                         f"lengths {list(choice_lengths)!r}")
    return pred, int(np.argmax(ll / lengths))


def _loglik(resp: Any, where: str) -> float:
    """``[loglik, is_greedy]`` or ``[[loglik, is_greedy]]``; numbers may be strings (lm-eval >= 0.4.3)."""
    if isinstance(resp, (list, tuple)) and len(resp) == 1 and isinstance(resp[0], (list, tuple)):
        resp = resp[0]
    if isinstance(resp, (list, tuple)) and len(resp) == 2 and not isinstance(resp[0], (bool, list, tuple)):
        try:
            value = float(resp[0])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isnan(value):
            return value
    raise ValueError(f"{where}: expected [loglik, is_greedy] or [[loglik, is_greedy]], got {resp!r}")


def _arguments(arguments: Any, where: str) -> list[tuple[str, str]]:
    """``(context, continuation)`` pairs from ``[[context, continuation], ...]`` or lm-eval's
    sanitized ``{"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}``."""
    if isinstance(arguments, Mapping):
        try:
            order = sorted(arguments, key=lambda k: int(str(k).rsplit("_", 1)[-1]))
            args = [(arguments[k]["arg_0"], arguments[k]["arg_1"]) for k in order]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: 'arguments' is not {{gen_args_i: {{arg_0, arg_1}}}}: {e!r}") from e
    elif isinstance(arguments, (list, tuple)) and all(isinstance(a, (list, tuple)) and len(a) >= 2
                                                       for a in arguments):
        args = [(a[0], a[1]) for a in arguments]
    else:
        raise ValueError(f"{where}: 'arguments' must hold one [context, continuation] per choice, "
                         f"got {str(arguments)[:200]}")
    if not all(isinstance(c, str) for a in args for c in a):
        raise ValueError(f"{where}: contexts and continuations must be strings, got {args!r}")
    return args


def _continuations(arguments: Any, where: str) -> list[str]:
    return [c for _, c in _arguments(arguments, where)]


def split_mutual_info(args: Sequence[tuple[str, str]]) -> int:
    """Number of real options: lm-eval's ``acc_mutual_info`` appends one ``("", continuation)``
    request per option after the conditional ones; otherwise every request is an option."""
    n = len(args) // 2
    if len(args) % 2 == 0 and n and all(c == "" for c, _ in args[n:]) \
            and [x for _, x in args[:n]] == [x for _, x in args[n:]] and all(c for c, _ in args[:n]):
        return n
    return len(args)


def parse_lm_eval_sample(record: Mapping, key: Callable[[Mapping], Hashable] | None = None,
                         length_unit: str = "chars", target_delimiter: str = " ", check: bool = True,
                         where: str = "record") -> tuple[Hashable, dict[str, Any]]:
    """One lm-eval per-sample record -> ``(id, {"gold", "pred", "pred_norm", "n_choices"})``, plus
    ``pred_per_token`` when 07 logged ``n_tokens`` and ``pred_calibrated`` when the record holds
    lm-eval's unconditional (``acc_mutual_info``) requests (:mod:`lib.eval.rules`), and the choice of
    every null control the record allows (``null_shortest_chars``, ``null_prior``, ..:
    :func:`lib.eval.rules.null_choices`).

    id: ``doc["id"]`` when present, else ``key(doc)``, else ``doc_id``. With ``check`` the recorded
    ``acc`` / ``acc_norm`` / ``acc_mutual_info`` must match the recomputed predictions, which catches a wrong length unit,
    delimiter or record shape instead of silently mis-scoring.
    """
    for field in ("doc_id", "doc", "target", "filtered_resps", "arguments"):
        if field not in record:
            raise ValueError(f"{where}: no {field!r} field; is this an lm-eval samples_*.jsonl "
                             f"(run with --log_samples)? Fields: {sorted(record)}")
    doc = record["doc"]
    if isinstance(doc, Mapping) and "id" in doc:
        item_id = doc["id"]
    elif key is not None:
        item_id = key(doc)
    else:
        item_id = record["doc_id"]
    where = f"{where} (id {item_id!r})"
    resps = record["filtered_resps"]
    if not isinstance(resps, (list, tuple)) or not resps:
        raise ValueError(f"{where}: 'filtered_resps' must be a non-empty list, got {resps!r}")
    logliks = [_loglik(r, f"{where} filtered_resps[{i}]") for i, r in enumerate(resps)]
    args = _arguments(record["arguments"], where)
    if len(args) != len(logliks):
        raise ValueError(f"{where}: {len(logliks)} log-likelihoods but {len(args)} continuations")
    n = split_mutual_info(args)
    prior = logliks[n:] or None
    logliks = logliks[:n]
    choices = [c[len(target_delimiter):] if target_delimiter and c.startswith(target_delimiter) else c
               for _, c in args[:n]]
    target = record["target"]
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        gold = int(target)
    elif isinstance(target, str) and target.strip().isdigit():
        gold = int(target)
    elif isinstance(target, str) and target in choices:
        gold = choices.index(target)
    else:
        raise ValueError(f"{where}: target {target!r} is neither an option index nor one of {choices!r}")
    if not 0 <= gold < len(choices):
        raise ValueError(f"{where}: gold index {gold} out of range for {len(choices)} choices")
    pred, pred_norm = predictions_from_logliks(logliks, [max(choice_length(c, length_unit), 1)
                                                         for c in choices])
    from lib.eval import rules
    n_tokens = record.get("n_tokens")
    chosen = rules.choose(logliks, choices, n_tokens=n_tokens, prior=prior)
    chosen["acc_norm"] = pred_norm          # the length unit asked for (chars unless told)
    if check:
        for rule, p in chosen.items():
            name = rules.REPORTED.get(rule)
            if name and isinstance(record.get(name), numbers.Real) and float(record[name]) != float(p == gold):
                raise ValueError(f"{where}: recorded {name}={record[name]} but recomputed prediction "
                                 f"{p} vs gold {gold} says otherwise; check length_unit="
                                 f"{length_unit!r} and target_delimiter={target_delimiter!r}")
    extra = {rules.KEY[r]: p for r, p in chosen.items() if r not in ("acc", "acc_norm")}
    nulls = {rules.NULL_KEY[c]: p for c, p in rules.null_choices(choices, n_tokens, prior).items()}
    return _hashable(item_id), {"gold": gold, "pred": pred, "pred_norm": pred_norm, "n_choices": len(choices),
                                **extra, **nulls}


def read_lm_eval_samples(source: str | Path | Iterable[Mapping],
                         key: Callable[[Mapping], Hashable] | None = None,
                         **kwargs: Any) -> dict[Hashable, dict[str, Any]]:
    """``{id: {"gold", "pred", "pred_norm"}}`` from an lm-eval samples JSONL file (or its records).
    ``kwargs`` go to :func:`parse_lm_eval_sample`; errors name the file and line."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
    else:
        records = [(f"record {i}", r) for i, r in enumerate(source)]
    out: dict[Hashable, dict[str, Any]] = {}
    seen_at: dict[Hashable, str] = {}
    for where, r in records:
        item_id, row = parse_lm_eval_sample(r, key, where=where, **kwargs)
        if item_id in out:
            raise ValueError(f"{where}: duplicate id {item_id!r} (first at {seen_at[item_id]}); "
                             "several filters or repeats in one file? Pass one filter's records")
        out[item_id], seen_at[item_id] = row, where
    return out


def belebele_key(doc: Mapping) -> tuple[str, int]:
    """Belebele has no id column; ``(link, question_number)`` is the same in every language."""
    return doc["link"], int(doc["question_number"])


# ---------------------------------------------------------------------------- metrics


def _kappa(p_o: np.ndarray, en_counts: np.ndarray, ko_counts: np.ndarray, n: int) -> np.ndarray:
    """Cohen's kappa from observed agreement and per-label counts (last axis); nan where p_e == 1."""
    chance = (en_counts * ko_counts).sum(axis=-1)  # integer: p_e == 1 exactly when chance == n*n
    p_e = chance / float(n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chance == n * n, np.nan, (p_o - p_e) / (1.0 - p_e))


def transfer_ratio(acc_en, acc_ko, chance: float):
    """(acc_ko - chance) / (acc_en - chance): 1 when Korean reaches English, 0 at chance; NaN
    where English is not above chance (the ratio means nothing there). Works on arrays."""
    acc_en, acc_ko = np.asarray(acc_en, dtype=float), np.asarray(acc_ko, dtype=float)
    den = acc_en - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, (acc_ko - chance) / np.where(den > 0, den, 1.0), np.nan)
    return out if out.ndim else float(out)


def paired_metrics(items: Sequence[Item], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95, chance: float | None = None) -> dict[str, Any]:
    """Accuracies, agreement, kappa, split shares, and percentile bootstrap CIs (``<name>_ci``).
    With ``chance`` (the accuracy of guessing) also the transfer ratio (:func:`transfer_ratio`),
    bootstrapped on the same resamples.

    The bootstrap draws ``rng.integers(0, n, size=(n_boot, n))`` from ``np.random.default_rng(seed)``
    and recomputes every metric on each resample of items. ``n_boot=0`` gives ``[nan, nan]`` CIs.
    """
    n = len(items)
    if n == 0:
        raise ValueError("no items to score: join_by_id returned nothing")
    codes: dict[Hashable, int] = {}
    gold, en, ko = (np.array([codes.setdefault(getattr(it, f), len(codes)) for it in items])
                    for f in ("gold", "pred_en", "pred_ko"))
    labels = np.arange(len(codes))
    en_ok, ko_ok, same = en == gold, ko == gold, en == ko
    splits = {"both_correct": en_ok & ko_ok, "both_wrong_same": ~en_ok & ~ko_ok & same,
              "both_wrong_different": ~en_ok & ~ko_ok & ~same,
              "only_en_correct": en_ok & ~ko_ok, "only_ko_correct": ~en_ok & ko_ok}
    kappa = _kappa(same.mean(), (en[:, None] == labels).sum(0), (ko[:, None] == labels).sum(0), n)
    out: dict[str, Any] = {"n": n, "acc_en": float(en_ok.mean()), "acc_ko": float(ko_ok.mean()),
                           "agreement": float(same.mean()), "kappa": float(kappa)}
    out.update({name: float(mask.mean()) for name, mask in splits.items()})
    metrics = CI_METRICS + (("transfer_ratio",) if chance is not None else ())
    if chance is not None:
        out["chance"] = float(chance)
        out["transfer_ratio"] = transfer_ratio(out["acc_en"], out["acc_ko"], chance)
    boot = {m: np.full(0, np.nan) for m in metrics}
    if n_boot > 0:
        idx = resamples(n, n_boot, seed)
        b_same = same[idx]
        en_counts = (en[idx][..., None] == labels).sum(1)  # (n_boot, n_labels)
        ko_counts = (ko[idx][..., None] == labels).sum(1)
        boot = {"acc_en": en_ok[idx].mean(1), "acc_ko": ko_ok[idx].mean(1),
                "agreement": b_same.mean(1), "kappa": _kappa(b_same.mean(1), en_counts, ko_counts, n)}
        if chance is not None:
            boot["transfer_ratio"] = transfer_ratio(boot["acc_en"], boot["acc_ko"], chance)
    for m in metrics:
        out[f"{m}_ci"] = percentile_interval(boot[m], level)
    return out


def resamples(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """The bootstrap's item indices, ``(n_boot, n)``: every metric computed on the same items with
    the same seed (here and in :mod:`lib.eval.nullcontrols`) is resampled the same way."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of bootstrap values, NaN ones (undefined resamples) left out;
    ``[nan, nan]`` when none is finite."""
    values = np.asarray(values, dtype=float)
    vals = values[np.isfinite(values)]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(vals, [tail, 100 - tail]) if vals.size else (np.nan, np.nan)
    return [float(lo), float(hi)]


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


def _cell(v: Any, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return "n/a" if math.isnan(v) else f"{float(v):.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x, digits) for x in v) + "]"
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
    lines = ["| " + " | ".join(_cell(c, digits) for c in columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
