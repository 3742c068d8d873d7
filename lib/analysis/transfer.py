"""The calibrated reading of 08's table: every model placed between the controls, per question cell.

The toy world asks three cells of paired questions (lib/toyworld): ``knowledge`` (facts stated in
English only: the Korean side measures transfer), ``bridge_heldout`` (facts stated in both
languages, question never trained: the in-language ceiling) and ``ghost`` (no facts: chance,
measured). The controls of stage 02 bracket the scale: ``oracle`` reads Korean as English by
construction (transfer ratio 1), ``oracle_deranged`` and the ghost cell must read chance (0), and
``oracle-alpha-A`` draws the calibration curve between them.

    rows = summary_rows(...)                          # lib.analysis.paired, one row per (model, cell)
    table = transfer_table(rows)                      # one row per model, controls first
    print(transfer_markdown(table))
    calibration_figure(rows, "figures/calibration.png")
    scale_figure(rows, "figures/transfer_scale.png")
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.core.plots import save
from lib.core.stats import fmt_ci

CELL_ORDER = ("knowledge", "bridge_heldout", "ghost")
ALPHA_RE = re.compile(r"alpha-(\d*\.?\d+)")


def alpha_of(model: str) -> float | None:
    """The alpha of a calibration control (``control-oracle-alpha-0.25`` -> 0.25); ``control-oracle``
    is alpha 1; None for any other model."""
    if "oracle" not in model or "deranged" in model:
        return None
    m = ALPHA_RE.search(model)
    return float(m.group(1)) if m else (1.0 if model.endswith("oracle") else None)


def final_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    """Rows of baselines, controls and each stage's final model (no intermediate checkpoints)."""
    return [r for r in rows if r.get("kind") in ("baseline", "control", "stage")]


def transfer_table(rows: Sequence[Mapping]) -> list[dict]:
    """One row per (run, model): the knowledge cell's acc_en, acc_ko, kappa and transfer ratio
    with intervals, and acc_ko of the other cells; controls before the pipeline's models."""
    by_model: dict[tuple, dict] = {}
    for r in final_rows(rows):
        key = (r["run"], r["model"])
        out = by_model.setdefault(key, {"run": r["run"], "model": r["model"], "kind": r.get("kind"),
                                        "stage": r.get("stage")})
        cell = r.get("cell", r.get("task"))
        for m in ("acc_en", "acc_ko", "agreement", "kappa", "transfer_ratio"):
            out[f"{cell}:{m}"] = r.get(m)
            out[f"{cell}:{m}_lo"], out[f"{cell}:{m}_hi"] = r.get(f"{m}_lo"), r.get(f"{m}_hi")
        out[f"{cell}:n"] = r.get("n")
    order = {"control": 0, "baseline": 1, "stage": 2}
    return sorted(by_model.values(), key=lambda d: (order.get(d["kind"], 3),))


def transfer_markdown(table: Sequence[Mapping], digits: int = 3) -> str:
    """08's transfer table (its transfer.md; the README's excerpt comes through lib.run.results):
    model, then knowledge acc_en / acc_ko / kappa / transfer ratio, bridge_heldout acc_en / acc_ko,
    ghost acc_en / acc_ko; brackets: 95% intervals."""
    cols = [("knowledge", "acc_en"), ("knowledge", "acc_ko"), ("knowledge", "kappa"),
            ("knowledge", "transfer_ratio"), ("bridge_heldout", "acc_en"), ("bridge_heldout", "acc_ko"),
            ("ghost", "acc_en"), ("ghost", "acc_ko")]
    several = len({t["run"] for t in table}) > 1
    head = ["model"] + [f"{c} {m}" for c, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for t in table:
        name = f"{t['run']}/{t['model']}" if several else t["model"]
        cells = [fmt_ci(t.get(f"{c}:{m}"), t.get(f"{c}:{m}_lo"), t.get(f"{c}:{m}_hi"), digits) for c, m in cols]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines) + "\n"


def _ci(r: Mapping, m: str) -> tuple[float, float, float]:
    v = r.get(m)
    v = np.nan if v is None else float(v)
    lo = r.get(f"{m}_lo")
    hi = r.get(f"{m}_hi")
    lo = v if lo is None or not math.isfinite(lo) else float(lo)
    hi = v if hi is None or not math.isfinite(hi) else float(hi)
    return v, max(0.0, v - lo) if math.isfinite(v) else 0.0, max(0.0, hi - v) if math.isfinite(v) else 0.0


def calibration_figure(rows: Sequence[Mapping], path: str | Path | None = None, cell: str = "knowledge"):
    """Transfer ratio (Korean above chance as a share of English above chance) against the oracle
    blend alpha, with 95% intervals; each stage's final model is a horizontal line on the same
    scale, so its transfer reads as an equivalent alpha."""
    sub = [r for r in rows if r.get("cell", r.get("task")) == cell]
    curve = sorted(((alpha_of(r["model"]), r) for r in sub if r.get("kind") == "control"
                    and alpha_of(r["model"]) is not None), key=lambda t: t[0])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if curve:
        xs = [a for a, _ in curve]
        vals = [_ci(r, "transfer_ratio") for _, r in curve]
        ax.errorbar(xs, [v for v, _, _ in vals], yerr=np.array([[lo for _, lo, _ in vals], [hi for _, _, hi in vals]]),
                    marker="o", capsize=3, color="black", label="oracle blend (no training)")
    for i, r in enumerate(x for x in sub if x.get("kind") in ("stage", "baseline")):
        v = r.get("transfer_ratio")
        if v is not None and math.isfinite(v):
            ax.axhline(v, color=f"C{i % 10}", ls="--", lw=1, label=f"{r['run']}/{r['model']}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("alpha (share of the English row copied onto its Korean word)")
    ax.set_ylabel(f"transfer ratio ({cell})")
    ax.set_title("Calibration: transfer ratio vs oracle alpha")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, path)


def scale_figure(rows: Sequence[Mapping], path: str | Path | None = None):
    """Per cell, acc_ko of every final model with 95% intervals, between the reference bands:
    chance (the ghost cell's and the deranged control's interval) and the oracle's acc_en."""
    fin = final_rows(rows)
    cells = [c for c in CELL_ORDER if any(r.get("cell") == c for r in fin)] or \
        list(dict.fromkeys(r.get("cell", r.get("task")) for r in fin))
    models = list(dict.fromkeys(f"{r['run']}/{r['model']}" for r in fin))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), max(3.5, 0.28 * len(models) + 1.5)),
                             squeeze=False, sharey=True)
    for ax, cell in zip(axes[0], cells):
        sub = {f"{r['run']}/{r['model']}": r for r in fin if r.get("cell", r.get("task")) == cell}
        oracle = next((r for k, r in sub.items() if k.endswith("control-oracle")), None)
        if oracle is not None:
            v, lo, hi = _ci(oracle, "acc_en")
            ax.axvspan(v - lo, v + hi, color="#2a9d8f", alpha=0.2, label="oracle acc_en (95% CI)")
        chance = next((r.get("chance") for r in sub.values() if r.get("chance")), 0.25)
        ax.axvline(chance, color="grey", ls=":", label=f"chance {chance:.2f}")
        for y, name in enumerate(models):
            if name not in sub:
                continue
            for m, colour, dy in (("acc_en", "C0", -0.15), ("acc_ko", "C3", 0.15)):
                v, lo, hi = _ci(sub[name], m)
                ax.errorbar([v], [y + dy], xerr=[[lo], [hi]], fmt="o", color=colour, ms=4, capsize=2,
                            label=m if y == 0 else None)
        ax.set_title(cell)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yticks(range(len(models)), models, fontsize=7)
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)
