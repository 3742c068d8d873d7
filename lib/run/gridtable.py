"""A grid's table and figure (lib.run.grid): ``grid.md``, ``grid.json`` and ``figures/grid.png``.

Per condition and stage model, the knowledge cell's acc_en, acc_ko, kappa and transfer ratio,
read from each run's 08 ``summary.json``, the controls first (02's models, scored in the first run
that has them). Without seeds each value has its 95% bootstrap interval over questions; with
seeds (lib.run.gridseeds) each is the mean over seeds with its run-level t-interval, each seed's
value (and question-level interval) kept in grid.json, and the paired differences against the
grid's ``reference``. The figure draws each condition's stage models (03 to the last; with seeds
every seed's point and the mean) with the oracle and deranged controls as reference bands.
"""
from __future__ import annotations

from pathlib import Path

from lib.core import paths
from lib.core.io import read_json, write_json, write_text
from lib.core.plots import save
from lib.core.stats import fmt_ci
from lib.run import gridseeds

CELL = "knowledge"
KEYS = ("acc_en", "acc_ko", "kappa", "kappa_lo", "kappa_hi", "transfer_ratio", "transfer_ratio_lo",
        "transfer_ratio_hi", "acc_ko_lo", "acc_ko_hi", "n")


def collect(grid, plans: dict) -> list[dict]:
    """Rows of the knowledge cell: the controls (from the first run that scored them), then each
    run's stage models (final models only). With seeds a row also names its ``seed`` and ``run``
    (the replicate) and its condition is the condition's name."""
    rows, seen_controls = [], False
    keys = KEYS + (("acc_en_lo", "acc_en_hi") if grid.seeds else ())
    for name, p in plans.items():
        f = paths.stage_dir(p["run"], "08_agreement_analysis") / "summary.json"
        if not f.exists():
            continue
        cond, seed = grid.runs[name]
        for r in read_json(f)["rows"]:
            if r.get("cell", r.get("task")) != CELL or r.get("kind") not in ("control", "stage", "baseline"):
                continue
            if r["kind"] in ("control", "baseline"):
                if seen_controls:
                    continue
                tag = {"condition": "(controls)"}
            else:
                tag = {"condition": cond} if seed is None else {"condition": cond, "seed": seed, "run": name,
                                                                 "model_dir": model_dir(p["run"], r["model"])}
            rows.append({**tag, "model": r["model"], "kind": r["kind"], **{k: r.get(k) for k in keys}})
        seen_controls = seen_controls or any(r["condition"] == "(controls)" for r in rows)
    return rows


def model_dir(run: str, model: str) -> str:
    """The folder a stage model of ``run`` resolves to (a stage shared with another replicate or
    condition is a link to that one's): two rows with the same folder are the same model."""
    stage = next((s for s in paths.stages() if model.startswith(s)), model)
    return str(paths.stage_dir(run, stage).resolve())


def markdown(table: list[dict]) -> str:
    head = "| condition | model | knowledge acc_en | acc_ko | kappa | transfer ratio |\n|---|---|---:|---:|---:|---:|\n"
    body = "".join(f"| {r['condition']} | {r['model']} | {fmt_ci(r['acc_en'], missing='-')} | "
                   f"{fmt_ci(r['acc_ko'], r.get('acc_ko_lo'), r.get('acc_ko_hi'), ci_digits=2, missing='-')} | "
                   f"{fmt_ci(r['kappa'], r.get('kappa_lo'), r.get('kappa_hi'), ci_digits=2, missing='-')} | "
                   f"{fmt_ci(r['transfer_ratio'], r.get('transfer_ratio_lo'), r.get('transfer_ratio_hi'), ci_digits=2, missing='-')} |\n"
                   for r in table)
    return head + body


def final_of_conditions(table: list[dict]) -> list[dict]:
    """Each condition's last stage model (the pipeline's output)."""
    last: dict[str, dict] = {}
    for r in table:
        if r["kind"] == "stage":
            last[r["condition"]] = r
    return list(last.values())


def stage_rows(table: list[dict]) -> list[dict]:
    """Each condition's trained stage models (02's initialisation, the same in every condition, left out)."""
    return [r for r in table if r["kind"] == "stage" and not r["model"].startswith("02_")]


def _bar(r: dict, m: str) -> tuple[float, float, float]:
    v = r.get(m)
    if v is None or v != v:
        return float("nan"), 0.0, 0.0
    lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
    lo = v if lo is None or lo != lo else lo
    hi = v if hi is None or hi != hi else hi
    return v, max(0.0, v - lo), max(0.0, hi - v)


def figure(table: list[dict], path: Path | None = None):
    """Transfer ratio and kappa of each condition's stage models (03 to the last, one colour a
    stage), 95% intervals (with seeds: every seed's value as a small dot, the mean with its
    run-level interval); the oracle and deranged controls as reference bands."""
    import matplotlib.pyplot as plt  # lib.run keeps matplotlib off its own top imports
    import seaborn as sns  # seaborn: ~0.8 s to import; only for this figure
    rows = stage_rows(table)
    seeded = any("per_seed" in r for r in rows)
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    stages = sorted({r["model"] for r in rows})
    controls = [r for r in table if r["kind"] == "control" and r["model"] in ("control-oracle", "control-oracle_deranged")]
    sns.set_theme(style="whitegrid")
    colours = dict(zip(stages, sns.color_palette("viridis", len(stages))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * max(len(conds), 4) + 1.8), sharey=True)
    width = 0.7 / max(len(stages), 1)
    for ax, m in zip(axes, ("transfer_ratio", "kappa")):
        for c, colour in zip(controls, ("#2a9d8f", "#e76f51")):
            v, lo, hi = _bar(c, m)
            if v != v:
                continue
            # a control with no spread (the oracle: exactly 1) still shows as a thin band
            ax.axvspan(v - max(lo, 0.01), v + max(hi, 0.01), color=colour, alpha=0.25,
                       label=c["model"].removeprefix("control-"))
        for k, stage in enumerate(stages):
            mine = [(conds.index(r["condition"]), r) for r in rows if r["model"] == stage]
            if not mine:
                continue
            ys = [i - 0.35 + width * (k + 0.5) for i, _ in mine]
            for y, (_, r) in zip(ys, mine):          # each seed's own value, just below its mean
                pts = [s.get(m) for s in r.get("per_seed", []) if s.get(m) is not None]
                ax.plot(pts, [y + 0.3 * width] * len(pts), "o", ms=3, alpha=0.6, color=colours[stage])
            vals, lo, hi = zip(*(_bar(r, m) for _, r in mine))
            ax.errorbar(vals, ys, xerr=[lo, hi], fmt="D" if seeded else "o", ms=4, color=colours[stage],
                        capsize=2, label=stage)
        ax.set_yticks(range(len(conds)), conds)
        what = "mean over seeds (run-level 95% CI), dots: seeds" if seeded else "95% CI over questions"
        ax.set(xlabel=m.replace("_", " "), title=f"{CELL}: {m.replace('_', ' ')}\n{what}")
        ax.axvline(0, color="grey", lw=0.8)
    axes[1].legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save(fig, path)


def write_outputs(grid, table: list[dict]) -> dict[str, Path]:
    """grid.json, grid.md and (when a stage model was scored) figures/grid.png; with seeds the
    table over seeds (:func:`lib.run.gridseeds.over_seeds`) from the per-replicate rows."""
    if grid.seeds:
        rows = gridseeds.over_seeds(table, grid.reference)
        out = {"json": write_json(grid.root / "grid.json", {
            "grid": str(grid.path), "cell": CELL, "seeds": grid.seeds, "seed_stages": list(grid.seed_stages),
            "reference": grid.reference,
            "interval": "stage models: mean over seeds, 95% t-interval over seeds (mean ± t(0.975, n-1)·sd/√n); "
                        "per_seed: each seed's value with its 95% bootstrap interval over questions",
            "rows": rows})}
        out["md"] = write_text(grid.root / "grid.md", gridseeds.markdown(rows, grid.reference))
    else:
        rows = table
        out = {"json": write_json(grid.root / "grid.json", {"grid": str(grid.path), "cell": CELL, "rows": table})}
        note = ("\nBrackets: 95% bootstrap intervals. Controls: oracle (Korean rows copied from English: the "
                "top of the scale) and oracle_deranged (rows of the wrong words: chance).\n")
        out["md"] = write_text(grid.root / "grid.md", markdown(table) + note)
    if stage_rows(rows):
        import matplotlib.pyplot as plt  # lib.run keeps matplotlib off its own top imports
        plt.close(figure(rows, grid.root / "figures" / "grid.png"))
        out["figure"] = grid.root / "figures" / "grid.png"
    return out
