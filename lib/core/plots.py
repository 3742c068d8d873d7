"""Figures the notebooks show and save under ``<stage>/figures/``.

Every function returns the matplotlib Figure and, given ``path``, saves it as PNG (atomically),
so a headless Papermill run leaves the same pictures as an interactive one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

# No backend is forced: in a kernel it is the inline one; headless scripts fall back to Agg.
import matplotlib.pyplot as plt


def save(fig, path: str | Path | None):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        tmp.replace(path)
    return fig


def length_histogram(before: Sequence[int], after: Sequence[int], title: str,
                     path: str | Path | None = None, labels=("before", "after")):
    """Overlaid histograms of sequence lengths (tokens per line) before and after a change."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    hi = max(max(before), max(after))
    bins = range(0, hi + 2, max(1, (hi + 1) // 40))
    ax.hist(before, bins=bins, alpha=0.6, label=f"{labels[0]} (mean {sum(before)/len(before):.1f})")
    ax.hist(after, bins=bins, alpha=0.6, label=f"{labels[1]} (mean {sum(after)/len(after):.1f})")
    ax.set_xlabel("tokens per line")
    ax.set_ylabel("lines")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str,
                 path: str | Path | None = None):
    """Bars per group, one colour per series (e.g. perplexity before/after per language)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(series), 1)
    for k, (name, vals) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, vals, width=width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def line_curve(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str,
               path: str | Path | None = None):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save(fig, path)


def multi_curve(xs: Sequence[float], series: dict[str, Sequence[float]], title: str, xlabel: str,
                ylabel: str, path: str | Path | None = None, logy: bool = False):
    """Several curves over the same x (e.g. Korean and English perplexity per step)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def interval_points(rows: Sequence[dict], title: str, path: str | Path | None = None,
                    xlabel: str = "value", ref: float | None = None):
    """Seaborn dot-and-interval plot, one panel per metric: rows of ``{model, metric, value, lo,
    hi}`` (e.g. 08's agreement and kappa per model with their bootstrap intervals); ``ref`` draws
    a reference line (e.g. kappa 0)."""
    import pandas as pd  # with seaborn: ~0.8 s to import; only these two figures use them
    import seaborn as sns  # see pandas above
    df = pd.DataFrame(rows)
    metrics = list(dict.fromkeys(df["metric"]))
    models = list(dict.fromkeys(df["model"]))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.35 * len(models) + 1.6),
                                 sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        d = df[df["metric"] == m].set_index("model").reindex(models).reset_index()
        sns.scatterplot(data=d, x="value", y="model", hue="model", palette="viridis", legend=False, ax=ax, s=40)
        ax.hlines(d["model"], d["lo"], d["hi"], color="grey", lw=1.5)
        if ref is not None:
            ax.axvline(ref, color="black", lw=0.8, ls=":")
        ax.set(title=m, xlabel=xlabel, ylabel="")
    fig.suptitle(title)
    return save(fig, path)


def layer_curves(rows: Sequence[dict], title: str, ylabel: str, path: str | Path | None = None):
    """Seaborn per-layer curves: rows of ``{model, run, layer, value}``, colour by model (in the
    given order), line style by run."""
    import pandas as pd  # with seaborn: ~0.8 s to import; only these two figures use them
    import seaborn as sns  # see pandas above
    df = pd.DataFrame(rows)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4))
    several = df["run"].nunique() > 1
    sns.lineplot(data=df, x="layer", y="value", hue="model", style="run" if several else None,
                 palette="viridis", marker=".", ax=ax, hue_order=list(dict.fromkeys(df["model"])))
    ax.set(xlabel="hidden state (0 = embeddings)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="best")
    return save(fig, path)
