"""Null controls for every paired task: what a predictor that never reads the question reaches.

Translated answer options keep their relative lengths, and a model's option log-likelihoods
depend on length, so on real paired tasks (ARC-Challenge, Belebele) agreement and kappa are
inflated by predictors that ignore the question. This module reads every model against them, on
the same items (issue 28):

- **null controls** (:data:`lib.eval.rules.NULLS`): the shortest and the longest option in characters
  (model-free, the same for every model), in the model's tokens (07 logs each option's count),
  and the model's own **prior-only** predictor (its highest option log-likelihood after an empty
  prompt, which 07 already scores for ``acc_mutual_info``). Each reads accuracy per language,
  agreement and kappa with bootstrap intervals (:func:`lib.analysis.agreement.paired_metrics`).
- **beyond the null** (:func:`beyond_null`): agreement and kappa against the agreement the
  model reaches when its Korean answer is moved by *another* question (each option's prior and
  length kept, the question's residual taken from another item): a deranged control per model.
  A model whose choices are all its prior (all option length) reads exactly 0 [0, 0]; a model
  whose question effect is noise independent per language reads 0 within its interval; a model
  that answers the question keeps what the question adds. (Counting agreement only on the items
  where the model left its prior in both languages, or conditioning chance on the prior-only
  choices, is biased upwards: the options a length-driven model falls back to are themselves
  correlated across languages; tests/test_nullcontrols.py measured 0.2-0.3 on a noisy length
  model. The subset's size is still reported: ``n_beyond``.)
- :func:`pair_length_kappa`: the lower 95% bound of the larger kappa of the two character-length
  controls on a pair's own data, model-free; :func:`lib.eval.rules.default_rule` uses it to pick an
  answer-text task's rule.

    from lib.eval import nullcontrols as nc
    controls = nc.control_rows(paired, items, n_boot=1000)   # one row per model, task, control
    vectors = nc.load_vectors(manifest)                      # option log-likelihoods per item
    beyond = nc.beyond_rows(paired, vectors, n_boot=1000)    # one row per model, task, rule
    table = nc.annotate(table, controls, beyond)             # summary rows gain null:/beyond: keys
    print(nc.controls_markdown(controls, beyond))
    nc.bands_figure(table, controls, "figures/null_controls.png")

A CPU-sized check: tests/test_nullcontrols.py (synthetic pairs, a length-only "model"; seconds).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.core import stats
from lib.core.plots import save
from lib.core.stats import fmt_ci
from lib.eval import rules, samples

MODEL_FREE = ("shortest_chars", "longest_chars")   # the same for every model of a task
SHOWN = ("acc_en", "acc_ko", "agreement", "kappa")
N_PERM = 20                                         # permutations of the beyond-null reading


# ---------------------------------------------------------------------------- per task, model-free


def length_kappa(en_choices: Sequence[Sequence[str]], ko_choices: Sequence[Sequence[str]],
                 n_boot: int = 1000, seed: int = 0) -> float:
    """The lower bootstrap 95% bound of Cohen's kappa, between English and Korean, of the
    shortest-option or the longest-option predictor (characters), whichever is larger: how
    surely a question-blind length predictor agrees with itself across the pair's languages.
    NaN when neither is defined (every item's options of equal length)."""
    if len(en_choices) != len(ko_choices) or not en_choices:
        raise ValueError(f"need the same items in both languages, got {len(en_choices)} English and "
                         f"{len(ko_choices)} Korean option lists")
    en = [rules.null_choices(c) for c in en_choices]
    ko = [rules.null_choices(c) for c in ko_choices]
    lows = [stats.paired_metrics([stats.Item(i, 0, e[c], k[c]) for i, (e, k) in enumerate(zip(en, ko))],
                              n_boot=n_boot, seed=seed)["kappa_ci"][0] for c in MODEL_FREE]
    finite = [k for k in lows if math.isfinite(k)]
    return max(finite) if finite else math.nan


def pair_length_kappa(pair: Any) -> float:
    """:func:`length_kappa` of a :class:`lib.eval.tasks.Pair` (its records, aligned by id)."""
    return length_kappa(*[[pair.shape.choices(r, lang) for r in pair.records[lang]] for lang in ("en", "ko")])


# ---------------------------------------------------------------------------- per model and task


def control_metrics(items: Sequence[Mapping], control: str, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Paired metrics (:func:`lib.analysis.agreement.paired_metrics`) of one null control on the items of
    :func:`lib.analysis.paired.task_items`; None when the logs lack its inputs (tokens, prior)."""
    col = rules.NULL_KEY[control]
    if not items or f"{col}_en" not in items[0]:
        return None
    return stats.paired_metrics([stats.Item(it["id"], it["gold"], it[f"{col}_en"], it[f"{col}_ko"]) for it in items],
                             n_boot=n_boot, seed=seed)


def score_vectors(entry: Mapping, task: str) -> dict[Hashable, dict[str, dict[str, np.ndarray | None]]]:
    """Per item id, per language: the option log-likelihoods (``ll``), the empty-prompt ones
    (``prior``, None when not logged), characters (``chars``) and tokens (``n_tokens``, None when
    not logged) of one model's per-sample logs of one task (07's ``samples`` files)."""
    out: dict[Hashable, dict] = {}
    for lang in ("en", "ko"):
        path = Path(entry["tasks"][task][lang]["samples"])
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            rec, where = json.loads(line), f"{path}:{n}"
            doc = rec.get("doc") or {}
            key = samples.belebele_key if "id" not in doc and {"link", "question_number"} <= set(doc) else None
            item_id, _ = samples.parse_lm_eval_sample(rec, key=key, check=False, where=where)
            args = samples.arguments(rec["arguments"], where)
            k = samples.split_mutual_info(args)
            lls = np.array([samples.loglik(r, where) for r in rec["filtered_resps"]], dtype=float)
            texts = [c[1:] if c.startswith(" ") else c for _, c in args[:k]]
            nt = rec.get("n_tokens")
            out.setdefault(item_id, {})[lang] = {
                "ll": lls[:k], "prior": lls[k:] if len(lls) > k else None,
                "chars": np.array([max(len(t), 1) for t in texts], dtype=float),
                "n_tokens": np.asarray(nt, dtype=float) if nt is not None else None}
    return out


def _scores(rule: str, ll: np.ndarray, prior: np.ndarray, chars: np.ndarray, n_tokens: np.ndarray | None) -> np.ndarray:
    """Option scores under ``rule`` (as :func:`lib.eval.rules.choose`), on ``[items, options]`` arrays."""
    if rule == "acc":
        return ll
    if rule == "acc_norm":
        return ll / chars
    if rule == "per_token":
        return ll / n_tokens
    return ll - prior


def beyond_null(vectors: Mapping[Hashable, Mapping], rule: str, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95, n_perm: int = N_PERM) -> dict | None:
    """Agreement beyond what the model reaches without the question's shared content, under ``rule``.

    Each option's log-likelihood is its prior (after an empty prompt) plus what the question adds
    (the residual). The null keeps every item's own options, priors and lengths in both languages
    and gives the Korean side the residuals of *another* item with as many options (``n_perm``
    random permutations): the agreement a model reaches when its Korean answer is moved by some
    other question, i.e. by option length, the prior and noise alone, as the toy world's deranged
    control reads the rows of other words. ``agreement``: observed minus null agreement;
    ``kappa``: (p_o - p_null) / (1 - p_null). A model whose choices are its prior (all option
    length) reads exactly 0 [0, 0]; one whose residuals are noise independent per language reads
    0 in expectation; one that answers the question keeps what the question adds. Intervals: the
    items resampled as in :func:`lib.analysis.agreement.paired_metrics` (same seed, same resamples), the
    permutations fixed. ``n_beyond``: items where the model's choice is not its prior-only choice
    in either language. None when the logs have no prior or lack what ``rule`` needs."""
    ids = list(vectors)
    if not ids or any(vectors[i][lang]["prior"] is None for i in ids for lang in ("en", "ko")):
        return None
    if rule == "per_token" and any(vectors[i][lang]["n_tokens"] is None for i in ids for lang in ("en", "ko")):
        return None
    rng = np.random.default_rng(seed)
    same, null_same, beyond = np.zeros(len(ids)), np.zeros(len(ids)), np.zeros(len(ids), dtype=bool)
    groups: dict[tuple, list[int]] = {}
    for j, i in enumerate(ids):
        groups.setdefault((len(vectors[i]["en"]["ll"]), len(vectors[i]["ko"]["ll"])), []).append(j)
    for rows in groups.values():
        arr = {lang: {k: np.stack([vectors[ids[j]][lang][k] for j in rows]) if vectors[ids[rows[0]]][lang][k] is not None
                      else None for k in ("ll", "prior", "chars", "n_tokens")} for lang in ("en", "ko")}
        pred = {lang: np.argmax(_scores(rule, **arr[lang]), axis=1) for lang in ("en", "ko")}
        ko = arr["ko"]
        resid = ko["ll"] - ko["prior"]
        hits = np.zeros(len(rows))
        for _ in range(n_perm):
            perm = rng.permutation(len(rows))
            hits += np.argmax(_scores(rule, ko["prior"] + resid[perm], ko["prior"], ko["chars"], ko["n_tokens"]),
                              axis=1) == pred["en"]
        same[rows] = pred["en"] == pred["ko"]
        null_same[rows] = hits / n_perm
        beyond[rows] = np.all([pred[lang] != np.argmax(arr[lang]["prior"], axis=1) for lang in ("en", "ko")], axis=0)

    def stat(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p_o, p_n = same[idx].mean(-1), null_same[idx].mean(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return p_o - p_n, np.where(p_n < 1 - 1e-12, (p_o - p_n) / (1 - p_n), np.nan)
    excess, kappa = stat(np.arange(len(ids)))
    boot = stat(stats.resamples(len(ids), n_boot, seed)) if n_boot > 0 else (np.full(0, np.nan),) * 2
    return {"n": len(ids), "n_beyond": int(beyond.sum()), "null_agreement": float(null_same.mean()),
            "agreement": float(excess), "agreement_ci": stats.percentile_interval(boot[0], level),
            "kappa": float(kappa), "kappa_ci": stats.percentile_interval(boot[1], level)}


def load_vectors(manifest: Sequence[Mapping]) -> dict[tuple[str, str, str], dict]:
    """``{(run, model, task): score_vectors(...)}`` for every model and task of the manifest."""
    return {(e["run"], e["name"], t): score_vectors(e, t) for e in manifest for t in e["tasks"]}


def _ids(p: Mapping) -> tuple:
    return p["run"], p["model"], p["task"]


def _flat(m: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = {}
    for k in keys:
        out[k] = m.get(k)
        lo, hi = m.get(f"{k}_ci", [None, None])
        out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def control_rows(paired: Sequence[Mapping], items: Mapping[tuple, Sequence[Mapping]],
                 n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (run, model, task, control) of :func:`lib.analysis.paired.paired_rows`: n, acc_en,
    acc_ko, agreement, kappa, each with ``_lo``/``_hi``. The model-free controls are computed
    once per task and item set and repeated on every model's rows."""
    cache: dict[tuple, dict | None] = {}
    rows = []
    for p in paired:
        its = items[_ids(p)]
        for c in rules.NULLS:
            key = (p["task"], c, tuple(it["id"] for it in its)) if c in MODEL_FREE else (*_ids(p), c)
            if key not in cache:
                cache[key] = control_metrics(its, c, n_boot, seed)
            m = cache[key]
            if m is None:
                continue
            rows.append({"run": p["run"], "model": p["model"], "kind": p.get("kind"), "stage": p.get("stage"),
                         "step": p.get("step"), "task": p["task"], "control": c,
                         "model_free": c in MODEL_FREE, "n": m["n"], **_flat(m, SHOWN)})
    return rows


def beyond_rows(paired: Sequence[Mapping], vectors: Mapping[tuple, Mapping],
                n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (run, model, task, rule the logs allow): the model's own agreement and kappa
    under the rule, beside the beyond-null reading (``beyond_agreement``, ``beyond_kappa`` with
    ``_lo``/``_hi``, ``n_beyond``); ``used`` marks the rule 08's table uses."""
    rows = []
    for p in paired:
        vec = vectors[_ids(p)]
        for rule, m in p["by_prediction"].items():
            b = beyond_null(vec, rule, n_boot, seed)
            rows.append({"run": p["run"], "model": p["model"], "kind": p.get("kind"), "stage": p.get("stage"),
                         "step": p.get("step"), "task": p["task"], "rule": rule,
                         "used": rule == p["prediction"], "n": m["n"], **_flat(m, SHOWN),
                         "n_beyond": b["n_beyond"] if b else None, "null_agreement": b["null_agreement"] if b else None,
                         **{f"beyond_{k}": v for k, v in _flat(b or {}, ("agreement", "kappa")).items()}})
    return rows


def annotate(table: Sequence[Mapping], controls: Sequence[Mapping], beyond: Sequence[Mapping]) -> list[dict]:
    """Summary rows (:func:`lib.analysis.paired.summary_rows`) with, per row, ``null:<control>:<metric>``
    (and ``_lo``/``_hi``) for every control and ``beyond:<metric>`` for the rule the row uses."""
    by_c = {(c["run"], c["model"], c["task"], c["control"]): c for c in controls}
    by_b = {(b["run"], b["model"], b["task"]): b for b in beyond if b["used"]}
    out = []
    for r in table:
        row = dict(r)
        for c in rules.NULLS:
            m = by_c.get((r["run"], r["model"], r["task"], c))
            if m is not None:
                row.update({f"null:{c}:{k}{s}": m[f"{k}{s}"] for k in SHOWN for s in ("", "_lo", "_hi")})
        b = by_b.get((r["run"], r["model"], r["task"]))
        if b is not None:
            row.update({f"beyond:{k}{s}": b[f"beyond_{k}{s}"] for k in ("agreement", "kappa")
                        for s in ("", "_lo", "_hi")})
            row["beyond:n_beyond"] = b["n_beyond"]
        out.append(row)
    return out


# ---------------------------------------------------------------------------- tables


def _ci(r: Mapping, k: str, digits: int = 3) -> str:
    """Row ``r``'s ``k`` with its ``k_lo`` / ``k_hi`` interval (:func:`lib.core.stats.fmt_ci`)."""
    return fmt_ci(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"), digits)


def _name(r: Mapping, several: bool) -> str:
    return f"{r['run']}/{r['model']}" if several else str(r["model"])


def _final(rows: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in rows if r.get("kind") != "checkpoint"]


def controls_markdown(controls: Sequence[Mapping], beyond: Sequence[Mapping]) -> str:
    """Two tables: the null controls per task (model-free ones once, the model's own per model),
    then each model's agreement and kappa beside its prior-only control and the beyond-null
    reading; brackets: bootstrap 95% intervals. Intermediate checkpoints are left out."""
    several = len({r["run"] for r in controls} | {r["run"] for r in beyond}) > 1
    lines = ["| task | control | model | n | acc_en | acc_ko | agreement | kappa |", "|---|---|---|---:|---:|---:|---:|---:|"]
    seen = set()
    for c in _final(controls):
        key = (c["task"], c["control"]) if c["model_free"] else (c["run"], c["model"], c["task"], c["control"])
        if key in seen:
            continue
        seen.add(key)
        who = "(any: model-free)" if c["model_free"] else _name(c, several)
        lines.append(f"| {c['task']} | {c['control']} | {who} | {c['n']} | "
                     + " | ".join(_ci(c, k) for k in SHOWN) + " |")
    prior = {(c["run"], c["model"], c["task"]): c for c in controls if c["control"] == "prior"}
    lines += ["", "| model | task | rule | agreement | kappa | prior-only agreement | prior-only kappa | "
              "beyond-null agreement | beyond-null kappa | items beyond |", "|---|---|---|" + "---:|" * 7]
    for b in _final([b for b in beyond if b["used"]]):
        pr = prior.get((b["run"], b["model"], b["task"]), {})
        lines.append(f"| {_name(b, several)} | {b['task']} | {b['rule']} | {_ci(b, 'agreement')} | "
                     f"{_ci(b, 'kappa')} | {_ci(pr, 'agreement')} | {_ci(pr, 'kappa')} | "
                     f"{_ci(b, 'beyond_agreement')} | {_ci(b, 'beyond_kappa')} | {b['n_beyond']} |")
    return "\n".join(lines) + "\n"


def rules_markdown(beyond: Sequence[Mapping], controls: Sequence[Mapping]) -> str:
    """08's ``rules.md``: every rule of every model and task (the rule used marked ``*``) with
    its accuracies, agreement, kappa and beyond-null kappa, beside the task's null controls'
    kappa (the largest of the length controls, and the model's prior-only)."""
    several = len({r["run"] for r in beyond}) > 1
    length = {}
    for c in controls:
        if c["control"] != "prior" and math.isfinite(c.get("kappa") or math.nan):
            k = (c["run"], c["model"], c["task"])
            length[k] = max(length.get(k, -math.inf), c["kappa"])
    prior = {(c["run"], c["model"], c["task"]): c for c in controls if c["control"] == "prior"}
    lines = ["| model | task | rule | acc_en | acc_ko | agreement | kappa | beyond-null kappa | items beyond "
             "| null: length kappa (max) | null: prior-only kappa |", "|---|---|---|" + "---:|" * 8]
    for b in beyond:
        k = (b["run"], b["model"], b["task"])
        lk = length.get(k)
        lines.append(f"| {_name(b, several)} | {b['task']} | {b['rule']}{' *' if b['used'] else ''} | "
                     + " | ".join(_ci(b, m) for m in ("acc_en", "acc_ko", "agreement", "kappa", "beyond_kappa"))
                     + f" | {b['n_beyond']} | {'n/a' if lk is None else f'{lk:.3f}'} | "
                     + f"{_ci(prior.get(k, {}), 'kappa')} |")
    return "\n".join(lines) + "\n"


def section(controls: Sequence[Mapping], beyond: Sequence[Mapping]) -> str:
    """The Markdown section 08 appends to ``summary.md`` and ``transfer.md``."""
    if not controls and not beyond:
        return ""
    return ("\n## Null controls: question-blind predictors on the same items\n\n"
            "Shortest / longest option in characters (model-free) and in the model's tokens, and the "
            "model's prior-only choice (its option log-likelihoods after an empty prompt). Beyond-null: "
            "agreement minus, and kappa against, the agreement the model reaches when its Korean answer "
            "is moved by another item's question (options, priors and lengths kept: a deranged control; "
            "lib.eval.nullcontrols.beyond_null); a model whose agreement is all option length reads 0. "
            "Items beyond: the model left its prior-only choice in both languages. "
            "Brackets: bootstrap 95% intervals.\n\n"
            + controls_markdown(controls, beyond))


# ---------------------------------------------------------------------------- figure


def bands_figure(table: Sequence[Mapping], controls: Sequence[Mapping], path: str | Path | None = None):
    """Per task, agreement and kappa of every final model with 95% intervals (dots), its prior-only
    control (grey x) and its beyond-null reading (red), between the bands of the model-free length
    controls (grey: the span of their 95% intervals), as the toy's deranged control is drawn."""
    fin = _final(table)
    tasks = list(dict.fromkeys(r["task"] for r in fin))
    several = len({r["run"] for r in fin}) > 1
    models = list(dict.fromkeys(_name(r, several) for r in fin))
    fig, axes = plt.subplots(len(tasks) or 1, 2, figsize=(10, max(3.0, 0.3 * len(models) + 1.4) * max(len(tasks), 1)),
                             squeeze=False)
    for row, task in zip(axes, tasks):
        free = [c for c in controls if c["task"] == task and c["model_free"]]
        for ax, m in zip(row, ("agreement", "kappa")):
            spans = [(c[f"{m}_lo"], c[f"{m}_hi"]) for c in free
                     if all(isinstance(x, float) and math.isfinite(x) for x in (c[f"{m}_lo"], c[f"{m}_hi"]))]
            if spans:
                ax.axvspan(min(s[0] for s in spans), max(s[1] for s in spans), color="grey", alpha=0.2,
                           label="length controls (chars, 95% CI)")
            for y, name in enumerate(models):
                r = next((x for x in fin if x["task"] == task and _name(x, several) == name), None)
                if r is None:
                    continue
                for key, colour, marker, dy, label in ((m, "C0", "o", -0.2, f"model {m}"),
                                                       (f"null:prior:{m}", "grey", "x", 0.0, "prior-only"),
                                                       (f"beyond:{m}", "C3", "s", 0.2, "beyond the null")):
                    v = r.get(key)
                    if not isinstance(v, (int, float)) or not math.isfinite(v):
                        continue
                    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
                    lo = v if not isinstance(lo, (int, float)) or not math.isfinite(lo) else lo
                    hi = v if not isinstance(hi, (int, float)) or not math.isfinite(hi) else hi
                    ax.errorbar([v], [y + dy], xerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt=marker,
                                color=colour, ms=4, capsize=2, label=label if y == 0 else None)
            ax.axvline(0, color="black", lw=0.6)
            ax.set_title(f"{task}: {m}")
            ax.set_yticks(range(len(models)), models, fontsize=7)
            ax.invert_yaxis()
            ax.grid(alpha=0.3)
        row[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)
