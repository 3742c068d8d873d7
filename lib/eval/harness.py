"""lm-evaluation-harness runs of every model of a pipeline run on the paired En/Ko tasks (notebook 07).

The models (:mod:`lib.eval.models`): the baselines (``toy`` = this run's 00 base model, Hub ids,
local folders), then each finished stage that produced a ``model/`` (its kept checkpoints first,
oldest first, then the final model). Each is loaded once (bf16 on CUDA, fp32 on CPU), wrapped in lm-eval's ``HFLM`` and scored
on every task of :mod:`lib.eval.tasks` in one ``simple_evaluate`` call, then freed. Per model::

    <stage>/results/<name>/results.json             lm-eval's results (config, versions, seeds, n-samples)
    <stage>/results/<name>/samples_<pair>_<lang>.jsonl   per-sample records (doc with "id", logliks, acc)
    <stage>/results/<name>/eval.json                this model's manifest entry; written last = done
    <stage>/extra/<name>/                           the extra tasks (``extras=``, :mod:`lib.eval.extratasks`),
                                                    scored with the same loaded model; extra.json last

and for the stage: ``evals.json`` (the manifest: one entry per model, see :func:`evaluate_model`),
``results.csv`` / ``results.md`` (one row per model and pair). A model whose ``eval.json`` exists
with the same settings is not evaluated again, so an interrupted notebook continues where it stopped.

    from lib.eval import harness as E
    pairs = E.write_tasks(cfg)                       # <stage>/tasks/*.yaml, checked pairs
    manifest = E.evaluate_all(E.models_for(cfg), pairs, cfg.stage_dir, device="cpu", limit=20)
    rows = E.table_rows(manifest)

CPU-sized check: the 1.1M-parameter toy base model scores the 250 toy ARC questions in both
languages (500 items, 2,000 option log-likelihoods) in ~8 s on one CPU thread, loading included.
"""
from __future__ import annotations

import gc
import logging
import shutil
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from lib.core.hashing import digest
from lib.core.io import atomic_dir, read_json, write_json, write_text
from lib.eval import extratasks as XT
from lib.eval import lmjson, rules
from lib.eval import samples as sample_logs
from lib.eval import tasks as ET
from lib.eval.kvscore import ContextOnceHFLM
from lib.eval.models import (  # noqa: F401  re-exported: 07 and the tests use E.models_for, E.stage_models
    ModelSpec,
    baseline_models,
    baseline_name,
    models_for,
    stage_models,
    unique_names,
    weight_files,
)
from lib.eval.tables import TABLE_COLUMNS, accuracy_figure, summary_metrics, table_rows, write_tables  # noqa: F401  re-exported for 07
from lib.modeling.model import AUTOCAST_DTYPES, PRECISIONS, auto_device, auto_dtype, load_model

# ---------------------------------------------------------------------------- the tasks


def write_tasks(cfg: Any) -> dict[str, ET.Pair]:
    """Check the ``tasks`` pairs and generate their YAMLs into ``<stage>/tasks/``."""
    return ET.write_tasks(cfg.tasks, cfg.stage_dir / "tasks", run=cfg.run_dir)


def pairs_table(pairs: Mapping[str, ET.Pair]) -> list[dict[str, Any]]:
    """One row per pair: format, items, chance accuracy, the prediction rule 08 uses and the
    length controls' kappa that chose it (:func:`lib.eval.rules.default_rule`), both sources."""
    return [{"pair": name, "format": p.format, "n": p.n, "chance": p.chance(), "rule": p.rule,
             "null_kappa": p.null_kappa,
             "en": p.sources["en"].describe(), "ko": p.sources["ko"].describe()}
            for name, p in pairs.items()]


# ---------------------------------------------------------------------------- one model


# Expected with an in-memory model and an explicit num_fewshot: said once per model, not useful.
EXPECTED_NOISE = ("`pretrained` model kwarg is not of type", "Passed an already-initialized model",
                  "Overwriting default num_fewshot")
NOISY_LOGGERS = ("lm_eval.models.huggingface", "lm_eval.evaluator")


@contextmanager
def _quiet_lm_eval(truncated: list[int]) -> Iterator[None]:
    """Drop lm-eval's expected warnings; count its one-per-request truncation warnings instead
    (the caller prints one summary line)."""
    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "exceeds model's maximum length" in msg:
            truncated[0] += 1
            return False
        return not msg.startswith(EXPECTED_NOISE)
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    for lg in loggers:
        lg.addFilter(keep)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(keep)


def task_digests(pairs: Mapping[str, ET.Pair]) -> dict[str, str]:
    """Per pair, what its stored results depend on: prompts, options, metrics, data (hashes), rule."""
    out = {}
    for name, p in pairs.items():
        info = ET.pair_info(p)
        out[name] = digest({lang: {"config": {k: v for k, v in ET.task_config(name, lang, p.shape,
                                                                              p.sources[lang]).items()
                                               if k != "dataset_kwargs"},
                                    "data": info[lang]["sha256"] or info[lang]["source"]}
                             for lang in ET.LANGS} | {"rule": p.rule})
    return out


def settings_digest(num_fewshot: int, limit: int, seed: int, precision: str = "auto") -> str:
    """The scoring settings every stored result depends on besides its model and task (the
    precision only when it is not ``auto``, so results stored before it was a setting are kept)."""
    d = {"num_fewshot": num_fewshot, "limit": limit, "seed": seed}
    if precision != "auto":
        d["precision"] = precision
    return digest(d)


def scoring_precision(precision: str, device) -> tuple[str, Any]:
    """``(weight dtype name, autocast dtype or None)`` 07 scores in. ``auto``: the inference dtype
    (:func:`lib.modeling.model.auto_dtype`: bf16 weights on Ampere+ GPUs, fp16 on older, fp32 on CPU);
    ``bf16-mixed`` / ``fp16-mixed``: fp32 weights under autocast, as the training stages measure;
    ``bf16`` / ``fp32``: those weights, no autocast. Option log-softmax is fp32 in every case."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        dev = auto_device(device) if isinstance(device, str) else torch.device(device)
        return str(auto_dtype(dev)).replace("torch.", ""), None
    if precision.endswith("-mixed"):
        return "float32", AUTOCAST_DTYPES[precision[:4]]
    return {"bf16": "bfloat16", "fp32": "float32"}[precision], None


def precision_note(precision: str, device) -> str:
    """How 07 computes, in words, for evals.json and metrics.json."""
    weights, auto = scoring_precision(precision, device)
    return f"{str(auto).replace('torch.', '')} autocast over {weights} weights" if auto is not None else weights


def model_fingerprint(m: ModelSpec) -> str:
    """A model's identity for stored results: where it is and its weight files (size, mtime)."""
    d = Path(m.path)
    files = ([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(d)]
             if d.is_absolute() and d.is_dir() else [])
    return digest({"path": m.path, "files": files})


def result_keys(m: ModelSpec, tasks: Mapping[str, str], settings: str) -> dict[str, dict[str, str]]:
    """Per pair, the key its stored result must match to be kept: (model, task, settings)."""
    mf = model_fingerprint(m)
    return {pair: {"model": mf, "task": td, "settings": settings} for pair, td in tasks.items()}


def _selection(pairs: Mapping[str, ET.Pair], limit: int) -> dict[str, list[int]] | None:
    """lm-eval ``samples=``: the first ``limit`` items (English order) in both languages, so a
    limited run still scores the same questions in En and Ko even if the files' orders differ.
    None when there is no limit, or when those items are each file's first ``limit`` rows (then
    lm-eval's ``limit`` selects the same rows, cheaper)."""
    if limit <= 0:
        return None
    chosen = {ET.task_name(name, lang): sorted(p.positions[lang][:limit])
              for name, p in pairs.items() for lang in ET.LANGS}
    if all(v == list(range(len(v))) for v in chosen.values()):
        return None      # the files' first items: lm-eval's limit picks them without walking every row
    return chosen


def _samples_jsonl(samples: Sequence[Mapping], fmt: str) -> str:
    """Per-sample records as lm-eval logs them, plus ``doc["id"]`` where the data has none
    (Belebele), so every pair joins on ``doc["id"]`` (``doc_hash`` stays lm-eval's, without it)."""
    lines = []
    for s in samples:
        doc = s["doc"]
        if "id" not in doc:
            s = {**s, "doc": {**doc, "id": ET.item_id(fmt, doc)}}
        lines.append(lmjson.dumps(s))
    return "".join(line + "\n" for line in lines)


def run_harness(lm: Any, pairs: Mapping[str, ET.Pair], tasks_dir: str | Path, *, batch_size: int = 16,
                num_fewshot: int = 0, limit: int = 0, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """One ``simple_evaluate`` call of an lm-eval model object on both sides of every pair."""
    from lm_eval import simple_evaluate  # lm-eval's evaluator: ~0.5 s more than HFLM; only when scoring
    from lm_eval.tasks import TaskManager  # loaded with the evaluator above
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    names = [ET.task_name(p, lang) for p in pairs for lang in ET.LANGS]
    chosen = _selection(pairs, limit)
    return simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, samples=chosen,
                           limit=limit if chosen is None and limit > 0 else None,
                           batch_size=batch_size, device=device, log_samples=True, task_manager=tm,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed)


def audit_samples(samples: Sequence[Mapping], rule: str,
                  n_tokens: Callable[[str, str], int] | None = None) -> list[dict]:
    """Each per-sample record plus what 08 needs to audit it without a model: ``n_tokens`` (the
    option's token count as the model scored it), ``rule`` (the pair's default rule) and
    ``chosen``: under each rule the logs allow, the index and text of the option chosen."""
    out = []
    for s in samples:
        args = sample_logs.arguments(s["arguments"], f"doc {s.get('doc_id')}")
        n = sample_logs.split_mutual_info(args)
        lls = [sample_logs.loglik(r, f"doc {s.get('doc_id')}") for r in s["filtered_resps"]]
        texts = [c[1:] if c.startswith(" ") else c for _, c in args[:n]]
        counts = [n_tokens(ctx, cont) for ctx, cont in args[:n]] if n_tokens else None
        picked = rules.choose(lls[:n], texts, n_tokens=counts, prior=lls[n:] or None)
        s = dict(s)
        if counts is not None:
            s["n_tokens"] = counts
        s["rule"] = rule
        s["chosen"] = {r: {"index": i, "text": texts[i]} for r, i in picked.items()}
        out.append(s)
    return out


def hflm_token_counter(lm: Any) -> Callable[[str, str], int]:
    """Token count of a continuation exactly as HFLM splits (context, continuation)."""
    return lambda ctx, cont: len(lm._encode_pair(ctx, cont)[1])


def _pair_files(pair: str) -> list[str]:
    return [f"results_{pair}.json"] + [f"samples_{ET.task_name(pair, lang)}.jsonl" for lang in ET.LANGS]


def write_model_results(m: ModelSpec, pairs: Mapping[str, ET.Pair], res: Mapping[str, Any] | None, final: Path,
                        seconds: float, keys: Mapping[str, Any] | None,
                        n_tokens: Callable[[str, str], int] | None = None,
                        keep: Mapping[str, Mapping] | None = None, order: Sequence[str] | None = None,
                        precision: str | None = None) -> dict[str, Any]:
    """Write ``results/<name>/`` and return the entry: per pair ``results_<pair>.json`` (lm-eval's
    results for its two tasks) and the audited samples of both languages; the pairs in ``keep``
    (pair -> its stored entry) are carried over from the folder as they are; ``eval.json`` last,
    with each pair's key (:func:`result_keys`) and how it was scored (``precision``)."""
    entry = {"name": m.name, "kind": m.kind, "stage": m.stage, "step": m.step, "path": m.path, "tasks": {},
             "seconds": seconds}
    if precision is not None:
        entry["precision"] = precision
    keep = keep or {}
    with atomic_dir(final, overwrite=True) as tmp:
        for pair in order or list(keep) + [p for p in pairs if p not in keep]:
            if pair in keep:
                for f in _pair_files(pair):
                    if (final / f).is_file():
                        shutil.copy(final / f, tmp / f)
                entry["tasks"][pair] = {lang: {**v, "samples": str(final / Path(v["samples"]).name)}
                                        for lang, v in keep[pair].items()}
                continue
            p = pairs[pair]
            write_text(tmp / f"results_{pair}.json", lmjson.dumps(lmjson.restricted(res, {ET.task_name(pair, lang) for lang in ET.LANGS}), indent=2) + "\n")
            entry["tasks"][pair] = {}
            for lang in ET.LANGS:
                t = ET.task_name(pair, lang)
                samples = audit_samples(res["samples"][t], p.rule, n_tokens)
                write_text(tmp / f"samples_{t}.jsonl", _samples_jsonl(samples, p.shape))
                r = res["results"][t]
                entry["tasks"][pair][lang] = {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"],
                                              "acc_mutual_info": r.get("acc_mutual_info,none"),
                                              "rule": p.rule, "n": len(samples),
                                              "samples": str(final / f"samples_{t}.jsonl")}
        write_json(tmp / "eval.json", {**entry, "keys": dict(keys or {})})
    return entry


def evaluate_model(m: ModelSpec, pairs: Mapping[str, ET.Pair], stage_dir: str | Path, *, device: str = "auto",
                   batch_size: int = 16, num_fewshot: int = 0, limit: int = 0, seed: int = 0,
                   keys: Mapping[str, Any] | None = None, keep: Mapping[str, Mapping] | None = None,
                   order: Sequence[str] | None = None, extras: Sequence[XT.Extra] = (),
                   extra_keys: Mapping[str, Any] | None = None, extra_keep: Mapping[str, Mapping] | None = None,
                   extra_order: Sequence[str] | None = None, context_once: bool = True,
                   precision: str = "auto") -> dict[str, Any]:
    """Load, score every pair of ``pairs`` in both languages (``keep``: stored pairs carried over), write ``results/<name>/`` and return the entry::

        {"name", "kind", "stage", "step", "path",
         "tasks": {pair: {"en": {"acc", "acc_norm", "acc_mutual_info", "rule", "n",
                                 "samples": <absolute path>}, "ko": {...}}},
         "seconds"}

    With ``extras`` (or ``extra_keep``) the same loaded model also scores those extra tasks
    (:mod:`lib.eval.extratasks`, stored under ``extra/<name>/``) and the entry gets ``"extra"``;
    with no pairs to score, the entry is only ``{"extra": ...}`` (the caller keeps the pairs).
    ``context_once``: score each shared context once (:mod:`lib.eval.kvscore`, the same numbers as
    lm-eval's ``HFLM``, which scores it again for every option; False: plain ``HFLM``).
    """
    stage_dir = Path(stage_dir)
    final = stage_dir / "results" / m.name
    start = time.perf_counter()
    dev = auto_device(device)
    weights, autocast = scoring_precision(precision, dev)
    model, tok = load_model(m.path, device=str(dev), dtype=weights)
    alive = weakref.ref(model)
    truncated = [0]
    try:
        with _quiet_lm_eval(truncated):
            # log-softmax in fp32 even for a bf16 model: option scores differ by small margins
            scorer = ContextOnceHFLM if context_once else HFLM
            lm = scorer(pretrained=model, tokenizer=tok, device=str(dev), batch_size=batch_size,
                        softmax_dtype="float32", mixed_precision_dtype=autocast)
            res, entry = {}, {}
            if pairs:
                res = run_harness(lm, pairs, stage_dir / "tasks", batch_size=batch_size, num_fewshot=num_fewshot,
                                  limit=limit, seed=seed, device=str(dev))
                entry = write_model_results(m, pairs, res, final, time.perf_counter() - start, keys,
                                            hflm_token_counter(lm), keep=keep, order=order,
                                            precision=precision_note(precision, dev))
            if extras or extra_keep:
                entry["extra"] = XT.score(lm, m.name, extras, stage_dir, extra_keys or {}, extra_keep, extra_order,
                                          batch_size=batch_size, num_fewshot=num_fewshot, limit=limit,
                                          seed=seed, device=str(dev))
    finally:
        del model
        lm = None
        # Reference counting frees the weights here. A full collection walks every tracked
        # object (~450k with lm-eval and transformers loaded: ~0.5 s a model on a CPU), so it
        # runs only when something (a reference cycle, a traceback) still holds the model.
        if alive() is not None:
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if truncated[0]:
        print(f"{m.name}: {truncated[0]} requests were longer than the model's context "
              f"({res.get('max_length')} tokens) and lost tokens on the left")
    return entry


def _reuse(m: ModelSpec, source: Mapping[str, Any], stage_dir: Path, keys: Mapping[str, Any]) -> dict[str, Any]:
    """``m``'s results as a copy of an identical model's (same weights, same tasks)."""
    src, final = stage_dir / "results" / source["name"], stage_dir / "results" / m.name
    entry = {"name": m.name, "kind": m.kind, "stage": m.stage, "step": m.step, "path": m.path,
             "tasks": {}, "seconds": 0.0}
    if "precision" in source:
        entry["precision"] = source["precision"]
    with atomic_dir(final, overwrite=True) as tmp:
        for pair, langs in source["tasks"].items():
            for f in _pair_files(pair):
                shutil.copy(src / f, tmp / f)
            entry["tasks"][pair] = {lang: {**v, "samples": str(final / Path(v["samples"]).name)}
                                    for lang, v in langs.items()}
        write_json(tmp / "eval.json", {**entry, "keys": dict(keys)})
    return entry


# ---------------------------------------------------------------------------- every model


class ChangedTask(ValueError):
    """A pair whose prompts or data changed since its results were stored; re-scored only when asked."""


def stored_entry(stage_dir: str | Path, name: str) -> dict[str, Any] | None:
    f = Path(stage_dir) / "results" / name / "eval.json"
    return read_json(f) if f.is_file() else None


def plan_model(stored: Mapping[str, Any] | None, keys: Mapping[str, Mapping[str, str]]) -> tuple[dict, list, list]:
    """``(kept, todo, changed)`` for one model: stored pairs whose key matches (pair -> entry), pairs
    to score, and among those the ones stored for this model and settings with another task."""
    old_keys = (stored or {}).get("keys", {})
    kept = {p: stored["tasks"][p] for p, k in keys.items() if old_keys.get(p) == k and p in stored["tasks"]}
    todo = [p for p in keys if p not in kept]
    changed = [p for p in todo if p in old_keys and old_keys[p]["task"] != keys[p]["task"]
               and {k: v for k, v in old_keys[p].items() if k != "task"}
               == {k: v for k, v in keys[p].items() if k != "task"}]
    return kept, todo, changed


def evaluate_all(models: Sequence[ModelSpec], pairs: Mapping[str, ET.Pair], stage_dir: str | Path, *,
                 device: str = "auto", batch_size: int = 16, num_fewshot: int = 0, limit: int = 0,
                 seed: int = 0, progress: bool = True, rescore_changed: bool = False,
                 extras: Sequence[XT.Extra] = (), extra_checkpoints: bool = True,
                 context_once: bool = True, precision: str = "auto") -> list[dict[str, Any]]:
    """Score what is not stored yet, per (model, pair): a new model, a new pair, new settings or
    a new checkpoint is scored, everything else kept; rewrite ``evals.json`` after each model.
    A pair whose prompts or data changed since it was stored raises :class:`ChangedTask` (before
    anything is scored) unless ``rescore_changed``; then only that pair is scored again.
    ``extras`` (:mod:`lib.eval.extratasks`) follow the same rules per (model, extra task), scored with
    the same loaded model; each entry then has ``"extra": {task: ...}`` (with ``extra_checkpoints``
    False, every entry but the intermediate checkpoints).

    ``context_once`` (see :func:`evaluate_model`) is not part of a stored result's key: both
    scorers give the same numbers."""
    stage_dir = Path(stage_dir)
    for stale in [*(stage_dir / "results").glob(".*.tmp*"), *(stage_dir / XT.STORE).glob(".*.tmp*")]:
        shutil.rmtree(stale, ignore_errors=True)    # a killed run's half-written folder
    scoring_precision(precision, "cpu")           # a bad value fails before anything is scored
    tasks, settings = task_digests(pairs), settings_digest(num_fewshot, limit, seed, precision)
    plans = {m.name: (result_keys(m, tasks, settings), stored_entry(stage_dir, m.name)) for m in models}
    mx = {m.name: [x for x in extras if extra_checkpoints or m.kind != "checkpoint"] for m in models}
    xplans = {m.name: (result_keys(m, {x.name: x.digest for x in mx[m.name]}, settings),
                       XT.stored(stage_dir, m.name)) for m in models}
    changed = sorted({p for keys, st in [*plans.values(), *xplans.values()] for p in plan_model(st, keys)[2]})
    if changed and not rescore_changed:
        raise ChangedTask(f"{stage_dir}: the prompts or data of {', '.join(changed)} changed since their "
                          "results were stored. Nothing was scored. Set rescore_changed: true in "
                          "07_benchmark_eval to re-score only those tasks, or give the changed task a new "
                          "name, or run with --force to re-score everything.")
    manifest: list[dict[str, Any]] = []
    done: dict[str, dict[str, Any]] = {}
    bar = tqdm(models, desc="models", unit="model", disable=not progress)
    for m in bar:
        bar.set_postfix_str(m.name)
        keys, stored = plans[m.name]
        kept, todo, _ = plan_model(stored, keys)
        xkeys, xstored = xplans[m.name]
        xkept, xtodo, _ = plan_model(xstored, xkeys)
        mine = mx[m.name]
        src_extra = done.get(m.same_as, {}).get("extra") if m.same_as else None
        if not todo and not xtodo:
            bar.write(f"{m.name}: every task already scored with these settings, kept")
        # the pairs: stored, copied from a model with the same weights, or scored (entry None)
        entry = None
        if not todo:
            entry = {**{k: v for k, v in stored.items() if k != "keys"},
                     "tasks": {p: stored["tasks"][p] for p in pairs}}
        elif m.same_as in done and not kept:
            entry = _reuse(m, done[m.same_as], stage_dir, keys)
            bar.write(f"{m.name}: same weights as {m.same_as}, its results reused")
        # the extra tasks, the same way (extra None: scored with the pairs' loaded model)
        extra = {}
        if xtodo and not xkept and src_extra is not None and list(src_extra) == [x.name for x in mine]:
            extra = XT.reuse(m.name, m.same_as, src_extra, stage_dir, xkeys)
            bar.write(f"{m.name}: same weights as {m.same_as}, its extra-task results reused")
        elif xtodo:
            extra = None
        elif mine:
            extra = {x.name: xstored["tasks"][x.name] for x in mine}
        if entry is None or extra is None:
            if kept or xkept:
                bar.write(f"{m.name}: scoring {', '.join(todo + xtodo)}; kept {', '.join([*kept, *xkept])}")
            scored = evaluate_model(m, {p: pairs[p] for p in todo} if entry is None else {}, stage_dir,
                                    device=device, batch_size=batch_size, num_fewshot=num_fewshot, limit=limit,
                                    seed=seed, keys=keys, keep=kept, order=list(pairs),
                                    extras=[x for x in mine if x.name in xtodo] if extra is None else [],
                                    extra_keys=xkeys, extra_keep=xkept if extra is None else None,
                                    extra_order=[x.name for x in mine], context_once=context_once,
                                    precision=precision)
            entry = scored if entry is None else entry
            extra = scored["extra"] if extra is None else extra
        if mine:
            entry["extra"] = extra
        done[m.name] = entry
        manifest.append(entry)
        write_json(stage_dir / "evals.json", manifest)
    return manifest
