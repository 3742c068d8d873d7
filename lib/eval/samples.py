"""lm-eval's per-sample logs, read back: each record's option log-likelihoods (and the
unconditional ones of ``acc_mutual_info``), its gold answer, and the option chosen under every
prediction rule and null control (:mod:`lib.eval.rules`). 07 audits its logs with it, 08 reads them.

    from lib.eval import samples
    en = samples.read_lm_eval_samples("samples_arc_challenge_<date>.jsonl")   # {id: {gold, pred, pred_norm, ..}}

Conventions:
- ``pred_norm`` mirrors lm-eval 0.4's ``acc_norm``: log-likelihood divided by the *character*
  length (``len(str)``) of the choice text without the target delimiter. (lm-eval's separate
  ``acc_bytes`` divides by the UTF-8 byte length: ``length_unit="bytes"``.) The unit matters only
  when one item's choices mix scripts: a Hangul syllable is 1 character but 3 bytes.
- Ties go to the first option, as ``np.argmax`` (and lm-eval) does.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from lib.eval import rules


def hashable(x: Any) -> Hashable:
    """An id as a dict key: JSON turns tuples (Belebele's ``(link, number)``) into lists."""
    return tuple(hashable(v) for v in x) if isinstance(x, list) else x


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


def loglik(resp: Any, where: str) -> float:
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


def arguments(arguments: Any, where: str) -> list[tuple[str, str]]:
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
    logliks = [loglik(r, f"{where} filtered_resps[{i}]") for i, r in enumerate(resps)]
    args = arguments(record["arguments"], where)
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
    return hashable(item_id), {"gold": gold, "pred": pred, "pred_norm": pred_norm, "n_choices": len(choices),
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
