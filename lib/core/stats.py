"""Paired statistics of two prediction vectors (English and Korean answers to the same items):
accuracy per language, agreement, Cohen's kappa, the both-right / both-wrong split, the transfer
ratio, and seeded percentile-bootstrap intervals; one bootstrap and one interval format for the
whole project (07's tables, 08, the judge, extra-task deltas). Across training runs (a grid's
seeds): the mean with its t-interval (:func:`mean_interval`).

    m = paired_metrics([Item(id, gold, pred_en, pred_ko), ...], n_boot=1000, seed=0)
    fmt_ci(m["kappa"], *m["kappa_ci"])        # '0.412 [0.35, 0.47]'

Kappa is ``nan`` when the expected agreement is 1 (both languages always pick one and the same
option): chance-corrected agreement is then 0/0, and a model that answers "A" to everything should
not be credited with kappa 1. Bootstrap resamples where kappa is undefined are left out of its CI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

SPLITS = ("both_correct", "both_wrong_same", "both_wrong_different", "only_en_correct", "only_ko_correct")
CI_METRICS = ("acc_en", "acc_ko", "agreement", "kappa")


@dataclass(frozen=True)
class Item:
    """One question answered in both languages; labels are option indices (or any hashable)."""
    id: Hashable
    gold: Any
    pred_en: Any
    pred_ko: Any


def _kappa(p_o: np.ndarray, en_counts: np.ndarray, ko_counts: np.ndarray, n: int) -> np.ndarray:
    """Cohen's kappa from observed agreement and per-label counts (last axis); nan where p_e == 1."""
    chance = (en_counts * ko_counts).sum(axis=-1)  # integer: p_e == 1 exactly when chance == n*n
    p_e = chance / float(n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chance == n * n, np.nan, (p_o - p_e) / (1.0 - p_e))


def transfer_ratio(acc_en, acc_ko, chance: float):
    """(acc_ko - chance) / (acc_en - chance): 1 when Korean reaches English, 0 at chance; NaN
    where English is not above chance (the ratio means nothing there). Works on arrays."""
    acc_en, acc_ko = np.asarray(acc_en, dtype=float), np.asarray(acc_ko, dtype=float)
    den = acc_en - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, (acc_ko - chance) / np.where(den > 0, den, 1.0), np.nan)
    return out if out.ndim else float(out)


def paired_metrics(items: Sequence[Item], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95, chance: float | None = None) -> dict[str, Any]:
    """Accuracies, agreement, kappa, split shares, and percentile bootstrap CIs (``<name>_ci``).
    With ``chance`` (the accuracy of guessing) also the transfer ratio (:func:`transfer_ratio`),
    bootstrapped on the same resamples.

    The bootstrap draws ``rng.integers(0, n, size=(n_boot, n))`` from ``np.random.default_rng(seed)``
    and recomputes every metric on each resample of items. ``n_boot=0`` gives ``[nan, nan]`` CIs.
    """
    n = len(items)
    if n == 0:
        raise ValueError("no items to score: join_by_id returned nothing")
    codes: dict[Hashable, int] = {}
    gold, en, ko = (np.array([codes.setdefault(getattr(it, f), len(codes)) for it in items])
                    for f in ("gold", "pred_en", "pred_ko"))
    labels = np.arange(len(codes))
    en_ok, ko_ok, same = en == gold, ko == gold, en == ko
    splits = {"both_correct": en_ok & ko_ok, "both_wrong_same": ~en_ok & ~ko_ok & same,
              "both_wrong_different": ~en_ok & ~ko_ok & ~same,
              "only_en_correct": en_ok & ~ko_ok, "only_ko_correct": ~en_ok & ko_ok}
    kappa = _kappa(same.mean(), (en[:, None] == labels).sum(0), (ko[:, None] == labels).sum(0), n)
    out: dict[str, Any] = {"n": n, "acc_en": float(en_ok.mean()), "acc_ko": float(ko_ok.mean()),
                           "agreement": float(same.mean()), "kappa": float(kappa)}
    out.update({name: float(mask.mean()) for name, mask in splits.items()})
    metrics = CI_METRICS + (("transfer_ratio",) if chance is not None else ())
    if chance is not None:
        out["chance"] = float(chance)
        out["transfer_ratio"] = transfer_ratio(out["acc_en"], out["acc_ko"], chance)
    boot = {m: np.full(0, np.nan) for m in metrics}
    if n_boot > 0:
        idx = resamples(n, n_boot, seed)
        b_same = same[idx]
        en_counts = (en[idx][..., None] == labels).sum(1)  # (n_boot, n_labels)
        ko_counts = (ko[idx][..., None] == labels).sum(1)
        boot = {"acc_en": en_ok[idx].mean(1), "acc_ko": ko_ok[idx].mean(1),
                "agreement": b_same.mean(1), "kappa": _kappa(b_same.mean(1), en_counts, ko_counts, n)}
        if chance is not None:
            boot["transfer_ratio"] = transfer_ratio(boot["acc_en"], boot["acc_ko"], chance)
    for m in metrics:
        out[f"{m}_ci"] = percentile_interval(boot[m], level)
    return out


def resamples(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """The bootstrap's item indices, ``(n_boot, n)``: every metric computed on the same items with
    the same seed (agreement, null controls, deltas) is resampled the same way."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of bootstrap values, NaN ones (undefined resamples) left out;
    ``[nan, nan]`` when none is finite."""
    values = np.asarray(values, dtype=float)
    vals = values[np.isfinite(values)]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(vals, [tail, 100 - tail]) if vals.size else (np.nan, np.nan)
    return [float(lo), float(hi)]


def fmt_ci(value: Any, lo: Any = None, hi: Any = None, digits: int = 3, ci_digits: int | None = None,
           signed: bool = False, missing: str = "n/a") -> str:
    """``'0.412 [0.350, 0.470]'``: the interval is shown when both ends are finite numbers; a value
    that is not a finite number reads ``missing``. ``signed``: a + before positive values (deltas);
    ``ci_digits``: decimals of the interval (default: ``digits``)."""
    def ok(x: Any) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)
    if not ok(value):
        return missing
    num = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    cd = digits if ci_digits is None else ci_digits
    return f"{num} [{lo:.{cd}f}, {hi:.{cd}f}]" if ok(lo) and ok(hi) else num


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` (integer >= 1) degrees of freedom, e.g.
    ``t_quantile(0.975, 2) = 4.3027...``: bisection on the closed-form CDF of integer df
    (Abramowitz & Stegun 26.7.3-4), so no scipy is needed; exact to ~1e-12."""
    if df < 1 or not 0 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < p < 1, got df={df}, p={p}")

    def cdf(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        c2, term, acc = math.cos(theta) ** 2, 1.0, 1.0
        if df % 2:          # odd df: A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + ...))
            for k in range(1, (df - 1) // 2):
                term *= c2 * (2 * k) / (2 * k + 1)
                acc += term
            a = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * acc if df > 1 else 0.0))
        else:               # even df: A = sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...)
            for k in range(1, df // 2):
                term *= c2 * (2 * k - 1) / (2 * k)
                acc += term
            a = math.sin(theta) * acc
        return 0.5 + a / 2              # A(t) = P(-t < T < t), signed with t
    lo, hi = -1.0, 1.0
    while cdf(lo) > p:
        lo *= 2
    while cdf(hi) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
        if hi - lo < 1e-13 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of independent runs (one value per seed) with its t-interval: ``mean ±
    t((1 + level) / 2, n - 1) * sd / sqrt(n)``, ``sd`` the sample standard deviation (n - 1).
    Values that are not finite numbers (None, NaN: a metric undefined in that run) are left out;
    ``n`` counts the rest. One value: no interval (``sd``, ``lo``, ``hi`` NaN); none: all NaN."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    n = len(vals)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "sd": nan, "lo": nan, "hi": nan, "n": 0}
    mean = math.fsum(vals) / n
    if n == 1:
        return {"mean": mean, "sd": nan, "lo": nan, "hi": nan, "n": 1}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": n}
