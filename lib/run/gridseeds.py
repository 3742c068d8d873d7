"""Seeds in a grid (lib.run.grid): every condition replicated once per seed, and its table over seeds.

    seeds: [1, 2, 3]             # optional: one replicate of every condition per seed
    seed_stages: ["03", "04"]    # optional: the stages that take the seed (default: 03-06)
    reference: combined          # optional (needs seeds): paired differences against this condition

A replicate sets ``seed: <s>`` in the sections of the stages that train after the instrument
(:data:`SEED_STAGES`: 03, 04, 05, 06) and runs as ``outputs/<grid>/<condition>-s<seed>/``. The toy
world and its base model (00) and 01-02 keep the profile's seed, so they stay one instrument for
the whole grid and run once; 07 and 08 keep theirs too (the same few-shot and bootstrap draws for
every replicate). The chain ids do the sharing as without seeds: two conditions that differ only
in 06 share 03-05 seed by seed.

The table (:func:`over_seeds`): per condition and stage model, each metric's mean over the seeds
with a run-level 95% interval (Student's t over seeds, :func:`lib.core.stats.mean_interval`), the
number of seeds, each seed's own value with its question-level bootstrap interval, and, against
``reference``, the mean of the per-seed differences on the seeds both ran, with its t-interval.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from lib.core import paths
from lib.core.params import notebook_params
from lib.core.stats import fmt_ci, mean_interval

SEED_STAGES = ("03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain", "06_instruction_tuning")
KEYS = ("seeds", "seed_stages", "reference")
METRICS = ("acc_en", "acc_ko", "kappa", "transfer_ratio")
SEED_MAX = 2**32            # numpy's seed range (torch's is wider)


def replicate(condition: str, seed: int | None) -> str:
    """The run name of a condition's replicate: ``recipe-s2``; the condition itself without seeds."""
    return condition if seed is None else f"{condition}-s{seed}"


def runs(conditions: dict, seeds: list[int]) -> dict[str, tuple[str, int | None]]:
    """Run name -> (condition, seed), condition by condition, seeds in the grid's order."""
    if not seeds:
        return {str(c): (str(c), None) for c in conditions}
    return {replicate(str(c), s): (str(c), s) for c in conditions for s in seeds}


def stage_name(value: Any) -> str | None:
    """``3``, ``"03"`` or ``"03_stage1_contrastive"`` -> the stage's full name (None: no such stage)."""
    v = str(value)
    return next((s for s in paths.stages() if v == s or v.zfill(2) == s[:2]), None)


def seed_overlay(seed: int | None, stages: tuple[str, ...]) -> dict[str, dict]:
    return {} if seed is None else {s: {"seed": seed} for s in stages}


def problems(raw: dict, at: Callable[..., str]) -> list[str]:
    """Every problem of the ``seeds``, ``seed_stages`` and ``reference`` keys of a grid file, one
    line each at ``at(key...)`` (file:line); ``raw`` is the whole grid file as read."""
    out: list[str] = []
    seeds, stages, ref = raw.get("seeds"), raw.get("seed_stages"), raw.get("reference")
    conds = raw.get("conditions") if isinstance(raw.get("conditions"), dict) else {}
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            out.append(f"{at('seeds')}: 'seeds' must be a non-empty list of distinct integers, e.g. [1, 2, 3], "
                       f"got {seeds!r}")
            seeds = None
        else:
            seen: set[int] = set()
            for i, s in enumerate(seeds):
                if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_MAX:
                    out.append(f"{at('seeds')}: seeds[{i}] must be an integer in [0, 2**32), got {s!r}")
                elif s in seen:
                    out.append(f"{at('seeds')}: seeds[{i}]: seed {s} is given twice; each seed is one replicate")
                else:
                    seen.add(s)
    if stages is not None:
        if not isinstance(stages, list) or not stages:
            out.append(f"{at('seed_stages')}: 'seed_stages' must be a non-empty list of stages, e.g. "
                       f"[\"03\", \"04\"], got {stages!r}")
        else:
            for s in stages:
                full = stage_name(s)
                if full is None:
                    out.append(f"{at('seed_stages')}: seed_stages: {s!r} is not a stage "
                               f"(stages: {', '.join(x[:2] for x in paths.stages())})")
                elif "seed" not in notebook_params(full):
                    out.append(f"{at('seed_stages')}: seed_stages: {full} has no 'seed' parameter")
        if raw.get("seeds") is None:
            out.append(f"{at('seed_stages')}: 'seed_stages' needs 'seeds' (the stages take the grid's seeds)")
    if ref is not None:
        if not isinstance(ref, str) or ref not in {str(c) for c in conds}:
            out.append(f"{at('reference')}: reference {ref!r} must name a condition "
                       f"(conditions: {', '.join(map(str, conds))})")
        if raw.get("seeds") is None:
            out.append(f"{at('reference')}: 'reference' needs 'seeds': the differences are paired over seeds")
    if isinstance(seeds, list) and seeds:
        out += _seed_set_by_hand(raw, at, chosen_stages(stages))
    return out


def chosen_stages(value: Any) -> tuple[str, ...]:
    """The grid's ``seed_stages`` as full stage names (the default when absent or unreadable)."""
    if not isinstance(value, list):
        return SEED_STAGES
    return tuple(dict.fromkeys(s for s in map(stage_name, value) if s))


def _seed_set_by_hand(raw: dict, at, stages: tuple[str, ...]) -> list[str]:
    """A seed stage's ``seed`` in ``defaults`` or a condition would be overwritten by the grid's."""
    out = []
    layers = [(("defaults",), raw.get("defaults"))] + [
        (("conditions", str(c)), over) for c, over in (raw.get("conditions") or {}).items()]
    for prefix, layer in layers:
        for section in stages:
            if isinstance(layer, dict) and isinstance(layer.get(section), dict) and "seed" in layer[section]:
                out.append(f"{at(*prefix, section, 'seed')}: {section}.seed is set by the grid's 'seeds' "
                           f"in every replicate; remove it here")
    return out


# ----------------------------------------------------------------------------- the table over seeds

def same_model(rows: list[dict]) -> bool:
    """Every replicate's row is the one model (lib.run.gridtable.collect's ``model_dir``)."""
    dirs = {r.get("model_dir") for r in rows}
    return len(dirs) == 1 and None not in dirs


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def over_seeds(rows: list[dict], reference: str | None = None, level: float = 0.95) -> list[dict]:
    """Per-replicate rows (``condition``, ``seed``, ``model``, ``kind`` and the metrics, as
    lib.run.grid collects them) -> the controls as they are (02's models: the same in every
    replicate), then one row per condition and stage model: for each metric its mean over seeds,
    ``<m>_sd``, the run-level t-interval ``<m>_lo``/``<m>_hi`` and ``<m>_n`` (the seeds where it is
    a finite number); ``seeds``; ``per_seed`` (each seed's values and question-level intervals);
    and ``vs_reference`` (per metric the mean of the per-seed differences, condition minus
    reference, over the seeds both have, with its t-interval)."""
    out = [r for r in rows if r["kind"] != "stage"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["kind"] == "stage":
            groups.setdefault((r["condition"], r["model"]), []).append(r)
    for (cond, model), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        row: dict[str, Any] = {"condition": cond, "model": model, "kind": "stage", "n_seeds": len(rs),
                               "seeds": [r["seed"] for r in rs]}
        if len(rs) > 1 and same_model(rs):
            # not trained under the seed (02, a stage outside seed_stages): one model in every replicate,
            # whose only interval is over questions (a t-interval over copies would read zero width)
            row["shared"] = True
            row.update({k: rs[0].get(k) for m in METRICS for k in (m, f"{m}_lo", f"{m}_hi")})
        else:
            for m in METRICS:
                mi = mean_interval([r.get(m) for r in rs], level)
                row.update({m: mi["mean"], f"{m}_sd": mi["sd"], f"{m}_lo": mi["lo"], f"{m}_hi": mi["hi"],
                            f"{m}_n": mi["n"]})
        row["per_seed"] = [{k: r.get(k) for k in ("seed", "run", "n", *METRICS,
                                                     *(f"{m}_{e}" for m in METRICS for e in ("lo", "hi")))}
                           for r in rs]
        ref = {r["seed"]: r for r in groups.get((reference, model), [])} if reference else {}
        if ref and cond != reference:
            row["vs_reference"] = {"reference": reference}
            if all(r.get("model_dir") and r.get("model_dir") == ref.get(r["seed"], {}).get("model_dir") for r in rs):
                row["vs_reference"]["shared"] = True      # the reference's own models: 0 by construction
            for m in METRICS:
                diffs = {r["seed"]: r[m] - ref[r["seed"]][m] for r in rs
                         if r["seed"] in ref and _finite(r.get(m)) and _finite(ref[r["seed"]].get(m))}
                row["vs_reference"][m] = {**mean_interval(list(diffs.values()), level), "seeds": list(diffs)}
        out.append(row)
    return out


def markdown(rows: list[dict], reference: str | None) -> str:
    """The table over seeds (controls first, with their question-level intervals), then the paired
    differences against the reference; the notes say which interval is which."""
    def cell(r: dict, m: str, digits: int = 3) -> str:
        return fmt_ci(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"), digits=digits, ci_digits=2, missing="-")
    def seeds_cell(r: dict) -> str:
        return "shared" if r.get("shared") else str(r.get("n_seeds", "-"))
    head = ("| condition | model | seeds | knowledge acc_en | acc_ko | kappa | transfer ratio |\n"
            "|---|---|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['condition']} | {r['model']} | {seeds_cell(r)} | {cell(r, 'acc_en')} | "
                   f"{cell(r, 'acc_ko')} | {cell(r, 'kappa')} | {cell(r, 'transfer_ratio')} |\n" for r in rows)
    seeds = sorted({s for r in rows for s in r.get("seeds", [])})
    note = (f"\nStage models: the mean over seeds ({', '.join(map(str, seeds))}) with a run-level 95% "
            "interval, the t-interval over seeds: mean ± t(0.975, n-1)·sd/√n (sd over the n seeds "
            "where the metric is defined; no interval with one seed). Each seed's value with its "
            "question-level bootstrap interval is in grid.json (`per_seed`). Controls and the base "
            "model (the same in every replicate): 95% bootstrap intervals over questions. Controls: "
            "oracle (Korean rows copied from English: the top of the scale) and oracle_deranged (rows "
            "of the wrong words: chance)."
            + (" Seeds `shared`: one model in every replicate (not trained under the seed), with its "
               "interval over questions." if any(r.get("shared") for r in rows) else "") + "\n")
    diffs = [r for r in rows if "vs_reference" in r and not r["vs_reference"].get("shared")]
    left = [r for r in rows if r.get("vs_reference", {}).get("shared")]
    if not reference or not (diffs or left):
        return head + body + note
    if not diffs:
        return (head + body + note + f"\n## Paired differences against `{reference}`, same seeds\n\n"
                f"None to show: every stage model of the other conditions is `{reference}`'s own (the same "
                "folder on every seed, so a difference of 0 by construction).\n")

    def delta(r: dict, m: str) -> str:
        d = r["vs_reference"][m]
        return fmt_ci(d["mean"], d["lo"], d["hi"], ci_digits=2, signed=True, missing="-") + f" (n={d['n']})"
    dhead = (f"\n## Paired differences against `{reference}`, same seeds\n\n"
             "| condition | model | Δ acc_en | Δ acc_ko | Δ kappa | Δ transfer ratio |\n|---|---|---:|---:|---:|---:|\n")
    dbody = "".join(f"| {r['condition']} | {r['model']} | " + " | ".join(delta(r, m) for m in METRICS) + " |\n"
                    for r in diffs)
    dnote = (f"\nEach seed's value minus `{reference}`'s for the same stage model and seed, averaged over "
             "the n seeds both ran, with the t-interval of those differences (pairing removes what a "
             "seed does to every condition alike)."
             + (f" Left out: {len(left)} stage model(s) a condition shares with `{reference}` (the same "
                "folder on every seed, so a difference of 0 by construction)." if left else "") + "\n")
    return head + body + note + dhead + dbody + dnote
