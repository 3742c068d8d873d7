"""Representation figures of notebook 08: do Korean sentences land next to their English translations?

Inputs are :class:`lib.analysis.paired.Representation` objects (or their ``row()`` dicts where only the
per-layer curves are needed)::

    from lib.analysis import repviz
    repviz.p1_by_layer(rep_rows, "figures/p1_by_layer.png")          # one line per model
    shown = repviz.pick(reps, 12)                                   # evenly spaced, first and last kept
    repviz.cosine_histograms(shown, "figures/cosines.png")          # pair vs non-pair cosine
    coords, seconds = repviz.umap_coords(shown, random_state=0)     # imports umap-learn (~15 s numba once)
    repviz.umap_grid(shown, coords, "figures/umap.png", pairs_linked=20)

UMAP is fitted per model (its own 2-D map: coordinates are not comparable across panels, the
Ko/En mixing within a panel is what to read) with a fixed ``random_state``, so reruns draw the same
picture. ``umap`` is imported only inside :func:`umap_coords`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from lib.core.plots import layer_curves, save

KO_COLOUR, EN_COLOUR = "#d62828", "#1d3557"


def _label(r: Any, several_runs: bool) -> str:
    get = r.get if isinstance(r, Mapping) else lambda k: getattr(r, k)
    return f"{get('run')}/{get('model')}" if several_runs else str(get("model"))


def _several(reps: Sequence[Any]) -> bool:
    return len({(r["run"] if isinstance(r, Mapping) else r.run) for r in reps}) > 1


def pick(items: Sequence[Any], k: int) -> list[Any]:
    """At most ``k`` items, evenly spaced in the given (pipeline) order, first and last included."""
    if k <= 0 or len(items) <= k:
        return list(items)
    idx = sorted(set(np.linspace(0, len(items) - 1, k).round().astype(int).tolist()))
    return [items[i] for i in idx]


def _grid(n: int, width: float = 3.2):
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, width * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def p1_by_layer(rep_rows: Sequence[Mapping], path: str | Path | None = None, key: str = "p1"):
    """Held-out retrieval P@1 (mean of Ko→En and En→Ko) per hidden state, one line per model
    (seaborn, :func:`lib.core.plots.layer_curves`); colour follows pipeline order, line style the run."""
    several = _several(rep_rows)
    rows = [{"model": _label(r, several), "run": r["run"], "layer": i, "value": y}
            for r in rep_rows for i, y in enumerate(r["per_layer"][key])]
    fig = layer_curves(rows, "Held-out Ko/En retrieval per layer (circle: rep_layer)", f"retrieval P@1 ({key})")
    ax = fig.axes[0]
    for r in rep_rows:
        ax.plot([r["layer"]], [r["per_layer"][key][r["layer"]]], "o", mfc="none", color="grey", ms=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 + len(rep_rows) // 20)
    return save(fig, path)


def cosines(ko: np.ndarray, en: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair cosines [n], non-pair cosines [n*n - n]) of row-aligned Ko/En vectors."""
    a = ko / np.linalg.norm(ko, axis=1, keepdims=True).clip(1e-12)
    b = en / np.linalg.norm(en, axis=1, keepdims=True).clip(1e-12)
    sims = a.astype(np.float64) @ b.astype(np.float64).T
    off = ~np.eye(len(sims), dtype=bool)
    return np.diagonal(sims).copy(), sims[off]


def cosine_histograms(reps: Sequence[Any], path: str | Path | None = None):
    """Per model: the cosine of each translation pair against that of unrelated Ko/En sentences
    (density), at the representation layer. Separated histograms = a shared space."""
    fig, axes = _grid(len(reps))
    several = _several(reps)
    for ax, r in zip(axes, reps):
        pair, nonpair = cosines(r.ko, r.en)
        lo, hi = min(pair.min(), nonpair.min()), max(pair.max(), nonpair.max())
        bins = np.linspace(lo, hi + 1e-9, int(np.clip(3 * np.sqrt(len(pair)), 10, 40)))
        ax.hist(nonpair, bins=bins, density=True, alpha=0.55, color="grey", label="non-pairs")
        ax.hist(pair, bins=bins, density=True, alpha=0.65, color=KO_COLOUR, label="pairs")
        for v, c in ((nonpair.mean(), "grey"), (pair.mean(), KO_COLOUR)):
            ax.axvline(v, color=c, ls="--", lw=1)
        ax.set_title(f"{_label(r, several)}\nlayer {r.layer}, P@1 {r.per_layer['p1'][r.layer]:.2f}", fontsize=8)
        ax.set_xlabel("cosine", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def umap_coords(reps: Sequence[Any], random_state: int = 0, n_neighbors: int = 15,
                metric: str = "cosine") -> tuple[list[np.ndarray], dict[str, float]]:
    """Per model, a 2-D UMAP of its Korean and English vectors together ([2n, 2]: Korean rows
    first); returns the coordinates and the fit seconds per model label."""
    import umap  # heavy (numba): imported only when UMAP is asked for
    coords, seconds = [], {}
    several = _several(reps)
    for r in reps:
        x = np.concatenate([r.ko, r.en]).astype(np.float32)
        if len(x) < 4:
            raise ValueError(f"UMAP needs at least 2 pairs, {_label(r, several)} has {len(r.ko)}")
        t0 = time.time()
        fit = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), n_components=2, metric=metric,
                        random_state=random_state, n_jobs=1, init="spectral" if len(x) > 20 else "random")
        coords.append(fit.fit_transform(x))
        seconds[_label(r, several)] = time.time() - t0
    return coords, seconds


def umap_grid(reps: Sequence[Any], coords: Sequence[np.ndarray], path: str | Path | None = None,
              pairs_linked: int = 20):
    """One panel per model: Korean and English points, the first ``pairs_linked`` translation
    pairs joined by a line (short lines = translations sit together)."""
    if len(coords) != len(reps):
        raise ValueError(f"{len(reps)} models but {len(coords)} UMAP projections")
    fig, axes = _grid(len(reps))
    several = _several(reps)
    for ax, r, xy in zip(axes, reps, coords):
        n = len(r.ko)
        ko, en = xy[:n], xy[n:]
        for i in range(min(pairs_linked, n)):
            ax.plot([ko[i, 0], en[i, 0]], [ko[i, 1], en[i, 1]], color="black", lw=0.6, alpha=0.5)
        ax.scatter(ko[:, 0], ko[:, 1], s=8, color=KO_COLOUR, label="Korean")
        ax.scatter(en[:, 0], en[:, 1], s=8, color=EN_COLOUR, label="English")
        ax.set_title(f"{_label(r, several)} (layer {r.layer})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
