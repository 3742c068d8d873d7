"""07's tables and figures: one row per model and pair, results.csv / results.md, the accuracy
bars, and the ``metrics.json`` body (:mod:`lib.eval.harness` scores; this module shows)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from lib.core import plots
from lib.core.io import write_text
from lib.core.markdown import to_markdown
from lib.eval import tasks as ET

TABLE_COLUMNS = ("model", "stage", "step", "pair", "acc_en", "acc_ko", "acc_norm_en", "acc_norm_ko", "n")


def table_rows(manifest: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and pair: model, stage, step, pair, acc_en, acc_ko, acc_norm_en, acc_norm_ko, n."""
    rows = []
    for e in manifest:
        for pair, t in e["tasks"].items():
            if t["en"]["n"] != t["ko"]["n"]:
                raise ValueError(f"{e['name']} / {pair}: {t['en']['n']} English but {t['ko']['n']} "
                                 "Korean items were scored; the pair is not aligned")
            rows.append({"model": e["name"], "stage": e["stage"], "step": e["step"], "pair": pair,
                         "acc_en": t["en"]["acc"], "acc_ko": t["ko"]["acc"],
                         "acc_norm_en": t["en"]["acc_norm"], "acc_norm_ko": t["ko"]["acc_norm"],
                         "n": t["en"]["n"]})
    return rows


def write_tables(rows: Sequence[Mapping[str, Any]], stage_dir: str | Path) -> tuple[Path, Path]:
    """``results.csv`` (full precision) and ``results.md`` (3 decimals) in ``stage_dir``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in TABLE_COLUMNS} for r in rows)
    stage_dir = Path(stage_dir)
    return (write_text(stage_dir / "results.csv", buf.getvalue()),
            write_text(stage_dir / "results.md", to_markdown(rows, TABLE_COLUMNS)))


def accuracy_figure(rows: Sequence[Mapping[str, Any]], pair: str, chance: float | None = None,
                    path: str | Path | None = None, metric: str = "acc"):
    """Grouped bars: English vs Korean accuracy per model for one pair (dashed line: chance)."""
    rows = [r for r in rows if r["pair"] == pair]
    fig = plots.grouped_bars([r["model"] for r in rows],
                             {"English": [r[f"{metric}_en"] for r in rows],
                              "Korean": [r[f"{metric}_ko"] for r in rows]},
                             f"{pair}: {metric} per model (n = {rows[0]['n'] if rows else 0})", metric)
    ax = fig.axes[0]
    fig.set_size_inches(max(6.0, 0.7 * len(rows) + 2), 4.0)
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="x", labelrotation=40)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
        ax.legend()
    return plots.save(fig, path)


def summary_metrics(manifest: Sequence[Mapping[str, Any]], pairs: Mapping[str, ET.Pair],
                    rows: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``metrics.json`` body: the table rows, per-model eval seconds and items/s, the pairs."""
    rows = list(rows) if rows is not None else table_rows(manifest)
    models = []
    for e in manifest:
        items = sum(t[lang]["n"] for t in e["tasks"].values() for lang in ET.LANGS)
        models.append({"name": e["name"], "kind": e["kind"], "seconds": e["seconds"], "items": items,
                       "items_per_s": items / e["seconds"] if e["seconds"] > 0 else None})
    timed = [m for m in models if m["items_per_s"] is not None]
    secs = sum(m["seconds"] for m in timed)
    return {"rows": rows, "models": models, "n_models": len(models),
            "eval_seconds": sum(m["seconds"] for m in models),
            "items_per_s": sum(m["items"] for m in timed) / secs if secs > 0 else None,
            "pairs": {name: ET.pair_info(p) for name, p in pairs.items()}}
