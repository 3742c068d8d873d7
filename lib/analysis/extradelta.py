"""08's reading of 07's extra tasks: each model minus the base model, per task, with 95% intervals.

07 scored every model on the extra tasks (:mod:`lib.eval.extratasks`: English retention such as
hellaswag or mmlu, Korean tasks such as kobest_*; on the toy world ``toy_en_syntax`` and
``toy_ko_syntax``) and kept per-item scores. Here each model is compared with the run's base
model on the *same items*: the delta is the mean of the paired per-item differences (model - base),
and its interval a percentile bootstrap over items (the resampling of :mod:`lib.core.stats`:
``rng.integers(0, n, size=(n_boot, n))`` from ``default_rng(seed)``), so the noise shared by both
models on an item cancels. English retention = the English tasks' deltas; for a group task the items
of all its subtasks are pooled (see :mod:`lib.eval.extratasks`)::

    from lib.analysis import extradelta as xd
    rows = xd.delta_rows(manifest, base="baseline-toy", n_boot=1000, seed=0)
    print(xd.markdown(rows))                          # one row per final model, a column per task
    xd.delta_figure(rows, "figures/extra_deltas.png")
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lib.core.plots import interval_points
from lib.core.stats import fmt_ci, percentile_interval
from lib.eval.extratasks import item_values
from lib.eval.models import baseline_name

LEVEL = 0.95
CHUNK = 200          # bootstrap resamples drawn at a time (bounds memory for 10k-item tasks)


def _samples_path(entry: Mapping, task: str, leaf: str) -> Path:
    """The stored per-sample file; when the run folder moved, found next to 07's stage folder."""
    p = Path(entry["extra"][task]["samples"][leaf])
    if p.is_file():
        return p
    moved = Path(entry["run_dir"]) / "07_benchmark_eval" / "extra" / entry["name"] / p.name \
        if entry.get("run_dir") else p
    if not moved.is_file():
        raise FileNotFoundError(f"{entry.get('run', '')}/{entry['name']} / extra task {task} / {leaf}: "
                                f"samples file {p} does not exist (was the run folder moved?)")
    return moved


def item_scores(entry: Mapping, task: str) -> dict[tuple[str, int], float]:
    """``{(leaf task, doc_id): per-item value}`` of one model's extra task, under its metric."""
    t = entry["extra"][task]
    out: dict[tuple[str, int], float] = {}
    for leaf in t["subtasks"]:
        path = _samples_path(entry, task, leaf)
        with open(path, encoding="utf-8") as f:
            recs = [json.loads(line) for line in f if line.strip()]
        for doc_id, v in item_values(recs, t["metric"], f"{path}"):
            out[(leaf, doc_id)] = v
    return out


def paired_delta(model: np.ndarray, base: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = LEVEL) -> dict[str, float]:
    """Mean of ``model``, of ``base`` and of ``model - base`` (paired by position), each with a
    percentile bootstrap interval over items (the same resamples for all three)."""
    model, base = np.asarray(model, float), np.asarray(base, float)
    if model.shape != base.shape or model.ndim != 1 or not model.size:
        raise ValueError(f"need two equal-length non-empty score vectors, got {model.shape} and {base.shape}")
    n = model.size
    out = {"n": n, "base": float(base.mean()), "value": float(model.mean()), "delta": float((model - base).mean())}
    if n_boot <= 0:
        return out | {f"{k}_{e}": math.nan for k in ("base", "value", "delta") for e in ("lo", "hi")}
    rng = np.random.default_rng(seed)
    means = {"base": [], "value": [], "delta": []}
    for start in range(0, n_boot, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, n_boot - start), n))
        b, m = base[idx].mean(1), model[idx].mean(1)
        means["base"].append(b)
        means["value"].append(m)
        means["delta"].append(m - b)
    for k, v in means.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = percentile_interval(np.concatenate(v), level)
    return out


def base_name(cfg: Any) -> str:
    """The base model's name among 07's models (``baseline-toy`` for ``base_model: toy``)."""
    return baseline_name(cfg.base_model, "" if cfg.base_model == "toy" else cfg.source(cfg.base_model))


def base_entry(entries: Sequence[Mapping], base: str) -> Mapping:
    hits = [e for e in entries if e["name"] == base]
    if not hits:
        raise ValueError(f"run {entries[0].get('run', '?')}: the base model {base!r} is not among 07's "
                         f"models ({', '.join(e['name'] for e in entries)}); the extra-task deltas are "
                         "measured against it: list base_model in 07's baselines")
    return hits[0]


def delta_rows(manifest: Sequence[Mapping], base: str, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (run, model, extra task) for every model but the base, in manifest order: run,
    model, kind, stage, step, task, lang, metric, n, base, value, delta with ``_lo``/``_hi``.
    ``base``: the base model's name in 07 (e.g. ``baseline-toy``), looked up in each run."""
    runs = list(dict.fromkeys(e["run"] for e in manifest if e.get("extra")))
    rows = []
    for run in runs:
        entries = [e for e in manifest if e["run"] == run]
        b = base_entry(entries, base)
        b_scores = {t: item_scores(b, t) for t in b.get("extra") or {}}
        for e in entries:
            if e is b:
                continue
            for task, t in (e.get("extra") or {}).items():
                if task not in b_scores:
                    raise ValueError(f"{run}/{e['name']}: extra task {task} was not scored for the base "
                                     f"model {base}; rerun 07")
                if t["metric"] != b["extra"][task]["metric"]:
                    raise ValueError(f"{run}/{e['name']} / {task}: metric {t['metric']} but the base "
                                     f"model's is {b['extra'][task]['metric']}; rerun 07")
                scores = item_scores(e, task)
                if set(scores) != set(b_scores[task]):
                    only = len(set(scores) ^ set(b_scores[task]))
                    raise ValueError(f"{run}/{e['name']} / {task}: {only} items are scored for only one of "
                                     f"it and the base model {base}; both need the same items (same limit)")
                keys = sorted(scores)
                d = paired_delta(np.array([scores[k] for k in keys]), np.array([b_scores[task][k] for k in keys]),
                                 n_boot=n_boot, seed=seed)
                rows.append({"run": run, "model": e["name"], "kind": e["kind"], "stage": e["stage"],
                             "step": e["step"], "task": task, "lang": t["lang"], "metric": t["metric"],
                             "base_model": base, **d})
    return rows


def markdown(rows: Sequence[Mapping], digits: int = 3) -> str:
    """One row per final model (no intermediate checkpoints), one column per extra task:
    ``base → value: delta [lo, hi]``; the header names each task's language and metric."""
    rows = [r for r in rows if r.get("kind") != "checkpoint"]
    if not rows:
        return ""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    info = {r["task"]: f"{r['lang']}, {r['metric'].removesuffix(',none')}, n={r['n']}" for r in rows}
    several = len({r["run"] for r in rows}) > 1
    models = list(dict.fromkeys((r["run"], r["model"]) for r in rows))
    cell = {(r["run"], r["model"], r["task"]): r for r in rows}
    lines = ["| model | " + " | ".join(f"{t} ({info[t]})" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for run, model in models:
        cells = []
        for t in tasks:
            r = cell.get((run, model, t))
            cells.append("" if r is None else
                         f"{fmt_ci(r['base'], digits=digits)} → {fmt_ci(r['value'], digits=digits)}: {fmt_ci(r['delta'], digits=digits, signed=True)} "
                         f"[{fmt_ci(r.get('delta_lo'), digits=digits, signed=True)}, {fmt_ci(r.get('delta_hi'), digits=digits, signed=True)}]")
        lines.append(f"| {run + '/' + model if several else model} | " + " | ".join(cells) + " |")
    base = rows[0]["base_model"]
    return ("\n".join(lines) + f"\n\nEach cell: {base} → this model on the same items: the change "
            "(model - base) [bootstrap 95% interval of the paired per-item difference]. English tasks: "
            "retention; Korean tasks: gain.\n")


def section(rows: Sequence[Mapping]) -> str:
    """The table with a heading, for the end of 08's ``summary.md`` ("" when there are no extra tasks)."""
    table = markdown(rows)
    return f"\n\n### Extra tasks: change from the base model\n\n{table}" if table else ""


def delta_figure(rows: Sequence[Mapping], path: str | Path | None = None):
    """Seaborn dots with 95% intervals: each final model's change from the base, one panel per task."""
    rows = [r for r in rows if r.get("kind") != "checkpoint"]
    several = len({r["run"] for r in rows}) > 1
    pts = [{"model": f"{r['run']}/{r['model']}" if several else r["model"],
            "metric": f"{r['task']} ({r['lang']}, {r['metric'].removesuffix(',none')})", "value": r["delta"],
            "lo": r["delta"] if not math.isfinite(r.get("delta_lo", math.nan)) else r["delta_lo"],
            "hi": r["delta"] if not math.isfinite(r.get("delta_hi", math.nan)) else r["delta_hi"]} for r in rows]
    base = rows[0]["base_model"] if rows else "the base model"
    return interval_points(pts, f"Extra tasks: change from {base} (95% intervals)", path,
                           xlabel="model - base", ref=0.0)
