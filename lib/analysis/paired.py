"""Notebook 08's tables: from 07's manifest to the agreement table a paper prints.

07 (``<run>/07_benchmark_eval/evals.json``) lists every model it evaluated (baselines, each stage's
final model, each checkpoint) with one lm-eval per-sample JSONL per paired task and language. Here
those files become per-item predictions in both languages, paired metrics with bootstrap CIs
(:mod:`lib.analysis.agreement`), held-out Ko/En representation metrics per layer (:mod:`lib.modeling.represent`), and
one summary row per model and task::

    from lib.analysis import paired as an
    manifest = an.load_manifest(run_dir, compare=["toy_no_stage1"])  # pipeline order, run-labelled
    items = an.load_items(manifest)                    # {(run, model, task): per-item predictions}
    paired = an.paired_rows(manifest, "acc_norm", n_boot=1000, seed=0, items=items)
    reps = an.representations(manifest, ko_lines, en_lines, layer=-1, pooling="mean")
    table = an.summary_rows(paired, an.representation_rows(reps))
    an.write_summary(table, stage_dir, note="...")     # summary.json + summary.md

Figures of these rows (accuracy / agreement across checkpoints, the answer split) are at the end;
representation figures (P@1 per layer, cosine histograms, UMAP) are in :mod:`lib.analysis.repviz`.
A CPU-sized run: the whole analysis of a tiny model takes seconds (see tests/test_analysis.py).
"""
from __future__ import annotations

import gc
import json
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from lib.analysis import agreement as ag
from lib.core import markdown, paths, stats
from lib.core.io import read_json, write_json, write_text
from lib.core.plots import interval_points, save
from lib.core.stats import fmt_ci
from lib.eval import rules, samples
from lib.modeling.model import load_model
from lib.modeling.represent import alignment_report, all_layer_vectors

EVAL_STAGE = "07_benchmark_eval"
MANIFEST = "evals.json"
KINDS = ("baseline", "control", "stage", "checkpoint")
LANGS = ("en", "ko")
PREDICTIONS = rules.KEY      # prediction rule -> agreement.py record key
REPORTED_TOLERANCE = 1e-6  # |recomputed - 07's reported accuracy| above this is warned about
SUMMARY_COLUMNS = ("run", "model", "stage", "step", "cell", "n", "acc_en", "acc_ko", "agreement",
                   "kappa", "transfer_ratio", "retrieval_p1")
WITH_CI = ("acc_en", "acc_ko", "agreement", "kappa", "transfer_ratio")


# ---------------------------------------------------------------------------- the manifest


def pipeline_key(entry: Mapping[str, Any], index: int = 0) -> tuple:
    """Sort key for pipeline order: baselines first (as listed), then the controls (as listed),
    then stages by folder name, each stage's checkpoints by step and its final model last."""
    if entry["kind"] in ("baseline", "control"):
        return (0 if entry["kind"] == "baseline" else 1, "", 0, index)
    step = entry.get("step")
    return (2, str(entry["stage"]), math.inf if entry["kind"] == "stage" or step is None else step, index)


def _check_entry(e: Any, i: int, where: Path) -> None:
    at = f"{where}, entry {i}"
    if not isinstance(e, Mapping):
        raise ValueError(f"{at}: expected an object, got {type(e).__name__}")
    missing = [k for k in ("name", "kind", "stage", "step", "path", "tasks") if k not in e]
    if missing:
        raise ValueError(f"{at} ({e.get('name', '?')}): missing {missing}; 07 writes name, kind, "
                         "stage, step, path, tasks for every model")
    at = f"{where}, entry {i} ({e['name']!r})"
    if e["kind"] not in KINDS:
        raise ValueError(f"{at}: kind {e['kind']!r} is not one of {KINDS}")
    if e["step"] is not None and not (isinstance(e["step"], int) and not isinstance(e["step"], bool)):
        raise ValueError(f"{at}: step must be an integer or null, got {e['step']!r}")
    if not isinstance(e["tasks"], Mapping):
        raise ValueError(f"{at}: 'tasks' must map a task pair name to {{en: .., ko: ..}}")
    for task, langs in e["tasks"].items():
        for lang in LANGS:
            if not isinstance(langs, Mapping) or not isinstance(langs.get(lang), Mapping) \
                    or "samples" not in langs[lang]:
                raise ValueError(f"{at}: task {task!r} has no {lang}.samples (the per-sample JSONL); "
                                 "07 must run lm-eval with log_samples")


def _resolve_samples(entry: dict, base: Path, where: str) -> None:
    for task, langs in entry["tasks"].items():
        for lang in LANGS:
            p = Path(langs[lang]["samples"])
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise FileNotFoundError(f"{where}: {entry['name']} / {task} / {lang}: samples file "
                                        f"{p} does not exist (was the run folder moved?)")
            langs[lang]["samples"] = str(p)


def _one_manifest(run_dir: Path, require_done: bool) -> list[dict]:
    stage = run_dir / EVAL_STAGE
    f = stage / MANIFEST
    if not f.is_file():
        raise FileNotFoundError(f"{f} does not exist: run 07 for this run first (python -m "
                                f"lib.run.pipeline run PARAMS.yaml --run {run_dir} --only 07)")
    if require_done and not (stage / "DONE").exists():
        raise FileNotFoundError(f"{stage} is not finished (no DONE); its {MANIFEST} may be partial. "
                                "Finish 07 first, or pass require_done=False to read it anyway")
    raw = read_json(f)
    if not isinstance(raw, list):
        raise ValueError(f"{f}: expected a list of models, got {type(raw).__name__}")
    entries, seen = [], set()
    for i, e in enumerate(raw):
        _check_entry(e, i, f)
        if e["name"] in seen:
            raise ValueError(f"{f}, entry {i}: model name {e['name']!r} appears twice")
        seen.add(e["name"])
        e = json.loads(json.dumps(e))  # a deep copy: samples paths are resolved in place
        _resolve_samples(e, stage, f"{f}, entry {i}")
        entries.append({**e, "run": run_dir.name, "run_dir": str(run_dir)})
    order = sorted(range(len(entries)), key=lambda i: pipeline_key(entries[i], i))
    return [entries[i] for i in order]


def load_manifest(run_dir: str | Path, compare: Sequence[str | Path] = (),
                  require_done: bool = True) -> list[dict]:
    """07's model list for ``run_dir`` and each run in ``compare`` (names or folders), each entry
    labelled with ``run`` (the folder name) and ``run_dir``, samples paths made absolute; every run
    in pipeline order, the main run first. Errors name the file, the entry and what is wrong."""
    runs = [paths.run_dir(str(r)) for r in [run_dir, *compare]]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs {[str(r) for r in runs]} share a folder name; rows are labelled by it")
    return [e for r in runs for e in _one_manifest(r, require_done)]


def labels(manifest: Sequence[Mapping]) -> list[str]:
    """``model``, or ``run/model`` when several runs are compared."""
    several = len({e["run"] for e in manifest}) > 1
    return [f"{e['run']}/{e.get('name', e.get('model'))}" if several else str(e.get("name", e.get("model")))
            for e in manifest]


# ---------------------------------------------------------------------------- per-item predictions


def _id_key(path: Path) -> Callable[[Mapping], Hashable] | None:
    """Belebele docs have no ``id``: pair them by (link, question_number); others by id or doc_id."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    doc = json.loads(line).get("doc")
                except (json.JSONDecodeError, AttributeError):
                    return None  # read_lm_eval_samples reports the line
                if isinstance(doc, Mapping) and "id" not in doc and {"link", "question_number"} <= set(doc):
                    return samples.belebele_key
                return None
    return None


def task_items(entry: Mapping, task: str) -> list[dict]:
    """Per-item predictions of one model on one paired task: id, gold, the task's default rule
    (``rule``, as 07 recorded it) and, for every rule the logs of both languages allow
    (:mod:`lib.eval.rules`), the chosen option in each language: ``pred_en`` (raw argmax, lm-eval
    ``acc``), ``pred_norm_en`` (per character), ``pred_per_token_en``, ``pred_calibrated_en``;
    and the null controls' choices (``null_prior_en``, ..: :mod:`lib.eval.nullcontrols`)."""
    files = {lang: Path(entry["tasks"][task][lang]["samples"]) for lang in LANGS}
    recs = {lang: samples.read_lm_eval_samples(f, key=_id_key(f)) for lang, f in files.items()}
    cols = [col for col in (*PREDICTIONS.values(), *rules.NULL_KEY.values())
            if all(col in r for lang in LANGS for r in recs[lang].values())]
    try:
        joined = {col: ag.join_by_id(recs["en"], recs["ko"], pred_key=col) for col in cols}
    except ValueError as e:
        raise ValueError(f"{entry['run']}/{entry['name']} task {task!r} ({files['en']} vs "
                         f"{files['ko']}): {e}") from None
    rule = entry["tasks"][task]["en"].get("rule", "acc")
    out = []
    for k, a in enumerate(joined["pred"]):
        it = {"id": a.id, "gold": a.gold, "rule": rule}
        for col in cols:
            it[f"{col}_en"], it[f"{col}_ko"] = joined[col][k].pred_en, joined[col][k].pred_ko
        it["chance"] = 1.0 / recs["en"][a.id]["n_choices"]
        out.append(it)
    return out


def load_items(manifest: Sequence[Mapping]) -> dict[tuple[str, str, str], list[dict]]:
    """``{(run, model, task): task_items(...)}`` for every model and task of the manifest."""
    return {(e["run"], e["name"], t): task_items(e, t) for e in manifest for t in e["tasks"]}


def write_predictions(items: Mapping[tuple[str, str, str], list[dict]], path: str | Path) -> Path:
    """One JSONL line per (run, model, task, item): ``pd.read_json(path, lines=True)`` reads it."""
    lines = [json.dumps({"run": run, "model": model, "task": task, **it}, ensure_ascii=False)
             for (run, model, task), its in items.items() for it in its]
    return write_text(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------- paired rows


def _warn_if_reported_differs(entry: Mapping, task: str, by: Mapping[str, Mapping]) -> None:
    """07 reports lm-eval's own accuracies; ours are recomputed from the samples and must match."""
    for lang in LANGS:
        for rule, metric in rules.REPORTED.items():
            rep = entry["tasks"][task][lang].get(metric)
            if rule not in by:
                continue
            ours = by[rule][f"acc_{lang}"]
            if isinstance(rep, (int, float)) and abs(rep - ours) > REPORTED_TOLERANCE:
                warnings.warn(f"{entry['run']}/{entry['name']} {task} {lang}: 07 reports {metric}="
                              f"{rep:.6f} but its samples give {ours:.6f}; check the samples files",
                              stacklevel=3)


def paired_rows(manifest: Sequence[Mapping], prediction: str = "auto", n_boot: int = 1000,
                seed: int = 0, items: Mapping | None = None, check_reported: bool = True) -> list[dict]:
    """One flat row per (model, task) in manifest order: run, model, kind, stage, step, task,
    prediction (the rule used: ``prediction``, or the task's own rule for ``auto``), n, acc_en/ko,
    agreement, kappa (each with ``_lo``/``_hi``), the five split shares; ``by_prediction`` holds
    the full metrics under every rule the logs allow.

    ``items`` (from :func:`load_items`) may hold a subset of the tasks and of their items (such
    as :func:`lib.eval.contamination.clean_items`, with ``check_reported=False``: 07's reported
    accuracies are over every item): only those are computed."""
    rules.check_rule(prediction)
    rows = []
    for e in manifest:
        for task in e["tasks"]:
            if items is not None and (e["run"], e["name"], task) not in items:
                continue
            its = items[(e["run"], e["name"], task)] if items is not None else task_items(e, task)
            by = {}
            chance = sum(it["chance"] for it in its) / len(its) if its and "chance" in its[0] else None
            for rule, col in PREDICTIONS.items():
                if its and f"{col}_en" not in its[0]:
                    continue
                pairs = [stats.Item(it["id"], it["gold"], it[f"{col}_en"], it[f"{col}_ko"]) for it in its]
                by[rule] = stats.paired_metrics(pairs, n_boot=n_boot, seed=seed, chance=chance)
            if check_reported:
                _warn_if_reported_differs(e, task, by)
            used = rules.resolve(prediction, its[0].get("rule") if its else None, by)
            flat = ag.summary_row(e["name"], e["stage"], task, by[used])
            rows.append({"run": e["run"], "model": e["name"], "kind": e["kind"], "stage": e["stage"],
                         "step": e["step"], "task": task, "cell": task, "prediction": used,
                         **{k: v for k, v in flat.items() if k not in ("model", "stage", "task")},
                         "by_prediction": by})
    return rows


def rules_rows(paired: Sequence[Mapping]) -> list[dict]:
    """One row per (run, model, task, rule): accuracies, agreement and kappa under every rule
    computed, the rule 08 uses marked ``*``: how much the table depends on the rule."""
    out = []
    for p in paired:
        for rule, m in p["by_prediction"].items():
            out.append({"run": p["run"], "model": p["model"], "task": p["task"],
                        "rule": rule + (" *" if rule == p["prediction"] else ""),
                        **{k: m.get(k) for k in ("acc_en", "acc_ko", "agreement", "kappa")}})
    return out


# ---------------------------------------------------------------------------- representations


@dataclass
class Representation:
    """Held-out Ko/En alignment of one model: metrics per hidden state, vectors at ``layer``."""
    run: str
    model: str
    kind: str
    stage: str
    step: int | None
    layer: int                       # hidden-state index (0 = embeddings) of the requested layer
    per_layer: dict[str, list[float]]  # p1 (mean of both directions), p1_ko2en, p1_en2ko, pair_cos, nonpair_cos, gap
    ko: np.ndarray                   # [n, d] float32 Korean vectors at ``layer``
    en: np.ndarray                   # [n, d] English vectors, en[i] translates ko[i]
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """JSON-ready: the metrics at ``layer`` and the per-layer curves (no vectors)."""
        at = {k: v[self.layer] for k, v in self.per_layer.items()}
        return {"run": self.run, "model": self.model, "kind": self.kind, "stage": self.stage,
                "step": self.step, "layer": self.layer, "pairs": int(self.ko.shape[0]),
                "retrieval_p1": at["p1"], **{k: v for k, v in at.items() if k != "p1"},
                "per_layer": self.per_layer, "seconds": self.seconds}


def layer_metrics(ko_layers, en_layers) -> dict[str, list[float]]:
    """Alignment metrics of paired per-layer vectors [L, n, d] (torch or numpy), one value per layer."""
    ko_layers, en_layers = torch.as_tensor(ko_layers), torch.as_tensor(en_layers)
    if ko_layers.shape != en_layers.shape or ko_layers.dim() != 3 or ko_layers.shape[1] < 2:
        raise ValueError(f"need Korean and English vectors of one shape [layers, n >= 2, d], got "
                         f"{tuple(ko_layers.shape)} and {tuple(en_layers.shape)}")
    out: dict[str, list[float]] = {k: [] for k in ("p1", "p1_ko2en", "p1_en2ko", "pair_cos", "nonpair_cos", "gap")}
    for ko, en in zip(ko_layers, en_layers):
        r = alignment_report(ko, en)
        r["p1"] = (r["p1_ko2en"] + r["p1_en2ko"]) / 2
        for k in out:
            out[k].append(float(r[k]))
    return out


def model_representation(model, tokenizer, ko_texts: Sequence[str], en_texts: Sequence[str], *,
                         layer: int = -1, pooling: str = "mean", batch_size: int = 32,
                         max_len: int = 128) -> tuple[dict[str, list[float]], int, np.ndarray, np.ndarray]:
    """(per-layer metrics, hidden-state index of ``layer``, Ko vectors, En vectors at it) of a loaded model."""
    if len(ko_texts) != len(en_texts):
        raise ValueError(f"{len(ko_texts)} Korean but {len(en_texts)} English texts: pass aligned pairs")
    kw = dict(pooling=pooling, batch_size=batch_size, max_len=max_len)
    ko = all_layer_vectors(model, tokenizer, list(ko_texts), **kw)
    en = all_layer_vectors(model, tokenizer, list(en_texts), **kw)
    n_states = ko.shape[0]
    idx = layer + n_states if layer < 0 else layer
    if not 0 <= idx < n_states:
        raise ValueError(f"rep_layer {layer} is out of range: this model has {n_states} hidden states "
                         f"(0 = embeddings .. {n_states - 1}, or -1 for the last)")
    return layer_metrics(ko, en), idx, ko[idx].numpy(), en[idx].numpy()


def representations(manifest: Sequence[Mapping], ko_texts: Sequence[str], en_texts: Sequence[str], *,
                    layer: int = -1, pooling: str = "mean", device: str = "auto", batch_size: int = 32,
                    max_len: int = 128, progress: bool = True) -> list[Representation]:
    """A :class:`Representation` per manifest entry, loading one model at a time (a path listed
    twice, e.g. a Hub baseline shared by compared runs, is computed once)."""
    done: dict[str, Representation] = {}
    out = []
    for e in tqdm(manifest, desc="representations", unit="model", disable=not progress):
        key = str(e["path"])
        if key not in done:
            t0 = time.time()
            model, tok = load_model(key, device=device)
            per_layer, idx, ko, en = model_representation(model, tok, ko_texts, en_texts, layer=layer,
                                                          pooling=pooling, batch_size=batch_size,
                                                          max_len=max_len)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            done[key] = Representation(e["run"], e["name"], e["kind"], e["stage"], e["step"], idx,
                                       per_layer, ko, en, time.time() - t0)
        out.append(replace(done[key], run=e["run"], model=e["name"], kind=e["kind"], stage=e["stage"],
                           step=e["step"]))
    return out


def representation_rows(reps: Iterable[Representation]) -> list[dict]:
    return [r.row() for r in reps]


# ---------------------------------------------------------------------------- the summary table


def summary_rows(paired: Sequence[Mapping], rep_rows: Sequence[Mapping] = ()) -> list[dict]:
    """The paper table: one row per (run, model, task) with the chosen prediction's metrics and CIs,
    both predictions' point estimates (``acc:agreement``, ``acc_norm:kappa``, ..) and the held-out
    retrieval P@1 of the same model (``None`` where representations were not computed)."""
    reps = {(r["run"], r["model"]): r for r in rep_rows}
    out = []
    for p in paired:
        row = {k: p.get(k) for k in ("run", "model", "kind", "stage", "step", "task", "prediction", "n")}
        row["cell"], row["chance"] = p.get("cell", p["task"]), p.get("chance")
        for m in WITH_CI:
            row.update({m: p.get(m), f"{m}_lo": p.get(f"{m}_lo"), f"{m}_hi": p.get(f"{m}_hi")})
        row.update({s: p[s] for s in stats.SPLITS})
        for pred, metrics in p["by_prediction"].items():
            row.update({f"{pred}:{m}": metrics.get(m) for m in WITH_CI})
        r = reps.get((p["run"], p["model"]))
        row.update({"retrieval_p1": r["retrieval_p1"] if r else None,
                    "rep_layer": r["layer"] if r else None})
        out.append(row)
    return out


def summary_markdown(rows: Sequence[Mapping], digits: int = 3) -> str:
    """A pipe table with :data:`SUMMARY_COLUMNS`; metrics with CIs read ``0.750 [0.500, 1.000]``."""
    shown = []
    for r in rows:
        d = {c: r.get(c) for c in SUMMARY_COLUMNS}
        for m in WITH_CI:
            d[m] = fmt_ci(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"), digits)
        shown.append(d)
    return markdown.to_markdown(shown, columns=SUMMARY_COLUMNS, digits=digits)


def write_summary(rows: Sequence[Mapping], out_dir: str | Path, note: str = "",
                  meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``summary.json`` ({meta.., columns, rows}) and ``summary.md`` (the table, then ``note``)."""
    out_dir = Path(out_dir)
    j = write_json(out_dir / "summary.json", {**(meta or {}), "columns": list(SUMMARY_COLUMNS),
                                              "rows": list(rows)})
    md = write_text(out_dir / "summary.md", summary_markdown(rows) + (f"\n{note.strip()}\n" if note else ""))
    return {"json": j, "md": md}


# ---------------------------------------------------------------------------- figures of the rows

SPLIT_COLOURS = {"both_correct": "#2a9d8f", "both_wrong_same": "#e9c46a", "both_wrong_different": "#e76f51",
                 "only_en_correct": "#457b9d", "only_ko_correct": "#9b5de5"}


def _x_order(rows: Sequence[Mapping]) -> list[str]:
    """Model names in pipeline order across runs (a name's first row decides its place)."""
    first: dict[str, tuple] = {}
    for i, r in enumerate(rows):
        first.setdefault(r["model"], pipeline_key(r, i))
    return sorted(first, key=first.get)


def trajectory(rows: Sequence[Mapping], metrics: Sequence[str] = ("acc_en", "acc_ko"),
               title: str = "", path: str | Path | None = None, ylim: tuple | None = (0, 1.02)):
    """One panel per task: each metric (colour) per model in pipeline order, 95% CI bars; one line
    style per run, so a compared run (e.g. without stage 1) reads against the main one."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    xs = _x_order(rows)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.45 * len(xs) + 2), 3.2 * len(tasks)),
                             squeeze=False, sharex=True)
    styles = ["-", "--", ":", "-."]
    for ax, task in zip(axes[:, 0], tasks):
        for k, run in enumerate(runs):
            sub = [r for r in rows if r["task"] == task and r["run"] == run]
            pos = [xs.index(r["model"]) + (k - (len(runs) - 1) / 2) * 0.08 for r in sub]
            for c, m in enumerate(metrics):
                y = np.array([r[m] if r[m] is not None else np.nan for r in sub], dtype=float)
                lo = np.array([r.get(f"{m}_lo") if r.get(f"{m}_lo") is not None else np.nan for r in sub], float)
                hi = np.array([r.get(f"{m}_hi") if r.get(f"{m}_hi") is not None else np.nan for r in sub], float)
                err = np.nan_to_num(np.clip(np.vstack([y - lo, hi - y]), 0, None))
                ax.errorbar(pos, y, yerr=err, color=f"C{c}", ls=styles[k % len(styles)], marker="o", ms=4,
                            capsize=2, label=m if len(runs) == 1 else f"{m} ({run})")
        ax.set_title(f"{title} {task}".strip())
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xticks(range(len(xs)), xs, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def agreement_intervals(rows: Sequence[Mapping], path: str | Path | None = None):
    """Agreement and kappa of every final model (no intermediate checkpoints), per task, as
    seaborn dots with their 95% bootstrap intervals; kappa 0 (chance) marked."""
    pts = []
    for r in rows:
        if r.get("kind") == "checkpoint":
            continue
        for m in ("agreement", "kappa"):
            if r.get(m) is None:
                continue
            lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
            pts.append({"model": f"{r['task']} · {r['model']}", "metric": m, "value": r[m],
                        "lo": r[m] if lo is None else lo, "hi": r[m] if hi is None else hi})
    return interval_points(pts, "Same answer in English and Korean (95% intervals)", path, ref=0.0)


def split_bars(rows: Sequence[Mapping], path: str | Path | None = None):
    """Stacked bars per model and task: both right / both wrong, same option / both wrong,
    different options / only English right / only Korean right."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names = labels(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 0.32 * len(rows) / len(tasks) + 1.8),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = [(n, r) for n, r in zip(names, rows) if r["task"] == task]
        left = np.zeros(len(sub))
        for split, colour in SPLIT_COLOURS.items():
            v = np.array([r[split] for _, r in sub], dtype=float)
            ax.barh(range(len(sub)), v, left=left, color=colour, label=split.replace("_", " "))
            left += v
        ax.set_yticks(range(len(sub)), [n for n, _ in sub], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{task}: answers in both languages")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return save(fig, path)
