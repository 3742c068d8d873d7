"""Prediction rules: which option a model "chose" from its option log-likelihoods.

A multiple-choice item gives one log-likelihood per option (summed over the option's tokens after
the prompt). How to turn those into one choice is a decision, and it decides whether answers in
two languages can be compared:

- ``acc``: the highest sum (lm-eval ``acc``). Favours options with few tokens.
- ``per_token``: the highest mean per token. Needs each option's token count (07 logs it).
- ``acc_norm``: the highest sum per *character* of the option text (lm-eval ``acc_norm``). A Hangul
  syllable and a Latin letter are not comparable units, so across languages this rule leans on
  the scripts, not the model: on a yes/no task ``yes``/``no`` vs ``예``/``아니요`` it picks by length.
- ``calibrated``: the sum minus the option's log-likelihood under a neutral (empty) prompt, as
  lm-eval's ``acc_mutual_info`` does. It removes each option string's prior in its own language,
  so a model whose preferences are the same in both languages up to the option strings agrees
  with itself. Needs the unconditional log-likelihoods (07 asks lm-eval for them).

Ties go to the first option (``np.argmax``).

Null controls (issue 28): predictors that never read the question, computed on the same items
(:func:`null_choices`): the shortest and the longest option in characters and in the model's
tokens, and the model's own ``prior`` (the option with the highest log-likelihood after an empty
prompt). Translated options keep their relative lengths, so these agree with themselves across
languages; :mod:`lib.eval.nullcontrols` reads every model against them. :func:`default_rule` uses
them to pick the rule of an answer-text task: ``calibrated`` where the length controls surely
agree across languages (real ARC, Belebele), ``acc`` where they do not (the toy cells).

    from lib.eval import rules
    rules.choose([-3.0, -4.5], ["yes", "no"], n_tokens=[1, 1], prior=[-2.0, -4.0])
    # {'acc': 0, 'per_token': 0, 'acc_norm': 0, 'calibrated': 1}
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

RULES = ("acc", "per_token", "acc_norm", "calibrated")
AUTO = "auto"
KEY = {"acc": "pred", "per_token": "pred_per_token", "acc_norm": "pred_norm", "calibrated": "pred_calibrated"}
REPORTED = {"acc": "acc", "acc_norm": "acc_norm", "calibrated": "acc_mutual_info"}  # lm-eval's own metric
NULLS = ("shortest_chars", "longest_chars", "shortest_tokens", "longest_tokens", "prior")
NULL_KEY = {n: f"null_{n}" for n in NULLS}   # null control -> agreement.py record key
# An answer-text task whose question-blind length predictors surely agree across languages (the
# lower 95% bound of their kappa at or above this) reads length, not the question, under ``acc``:
# it gets ``calibrated``. Measured (docs/results.md, "Real tasks against question-blind controls"): lower
# bounds ARC-Challenge 0.26, Belebele 0.41; the toy cells 0.02-0.08 (one-token options).
NULL_KAPPA_MAX = 0.15


def check_rule(rule: str, allow_auto: bool = True) -> str:
    allowed = ((AUTO,) if allow_auto else ()) + RULES
    if rule not in allowed:
        raise ValueError(f"prediction must be one of {', '.join(allowed)}, got {rule!r}")
    return rule


def choose(logliks: Sequence[float], choices: Sequence[str], n_tokens: Sequence[int] | None = None,
           prior: Sequence[float] | None = None) -> dict[str, int]:
    """Index chosen under every rule the inputs allow (``per_token`` needs ``n_tokens``,
    ``calibrated`` needs ``prior``)."""
    ll = np.asarray(logliks, dtype=float)
    if ll.ndim != 1 or ll.size == 0 or np.isnan(ll).any():
        raise ValueError(f"need a non-empty list of log-likelihoods without NaN, got {logliks!r}")
    if len(choices) != ll.size:
        raise ValueError(f"{ll.size} log-likelihoods but {len(choices)} choices")
    chars = np.array([max(len(c), 1) for c in choices], dtype=float)
    out = {"acc": int(np.argmax(ll)), "acc_norm": int(np.argmax(ll / chars))}
    if n_tokens is not None:
        nt = np.asarray(n_tokens, dtype=float)
        if nt.shape != ll.shape or (nt <= 0).any():
            raise ValueError(f"need one positive token count per choice, got {list(n_tokens)!r}")
        out["per_token"] = int(np.argmax(ll / nt))
    if prior is not None:
        pr = np.asarray(prior, dtype=float)
        if pr.shape != ll.shape or np.isnan(pr).any():
            raise ValueError(f"need one prior log-likelihood per choice, got {list(prior)!r}")
        out["calibrated"] = int(np.argmax(ll - pr))
    return {r: out[r] for r in RULES if r in out}


def null_choices(choices: Sequence[str], n_tokens: Sequence[int] | None = None,
                 prior: Sequence[float] | None = None) -> dict[str, int]:
    """Index chosen by every null control the inputs allow (:data:`NULLS`): shortest / longest
    option in characters, in tokens (needs ``n_tokens``), highest prior (needs ``prior``, the
    log-likelihoods after an empty prompt). Ties go to the first option."""
    chars = np.array([len(c) for c in choices])
    if chars.size == 0:
        raise ValueError("need at least one choice")
    out = {"shortest_chars": int(np.argmin(chars)), "longest_chars": int(np.argmax(chars))}
    if n_tokens is not None:
        nt = np.asarray(n_tokens)
        if nt.shape != chars.shape:
            raise ValueError(f"need one token count per choice, got {list(n_tokens)!r}")
        out["shortest_tokens"], out["longest_tokens"] = int(np.argmin(nt)), int(np.argmax(nt))
    if prior is not None:
        pr = np.asarray(prior, dtype=float)
        if pr.shape != chars.shape or np.isnan(pr).any():
            raise ValueError(f"need one prior log-likelihood per choice, got {list(prior)!r}")
        out["prior"] = int(np.argmax(pr))
    return out


def default_rule(fixed_labels: bool, null_kappa: float | None = None) -> str:
    """The rule a task uses unless told otherwise, chosen by its null controls.

    - Fixed labels whose strings differ by language (yes/no, true/false): ``calibrated``, since
      the label's own prior is the bias to remove.
    - Answer texts whose question-blind length predictors surely agree across languages
      (``null_kappa``: the lower 95% bound of the larger kappa of the shortest / longest option in
      characters, :func:`lib.eval.nullcontrols.length_kappa`, at or above :data:`NULL_KAPPA_MAX`; real
      ARC-Challenge 0.26, Belebele 0.41): ``calibrated``. Under ``acc`` a model that never reads
      the question inherits that agreement; removing each option's prior after an empty prompt
      removes it (docs/results.md gives the null models' kappa under each rule).
    - Other answer texts (the toy cells: one-token entity names, bounds 0.02-0.08): ``acc``,
      lm-eval's reference metric; there is no length to remove, and the toy's numbers stay."""
    if fixed_labels:
        return "calibrated"
    if null_kappa is not None and math.isfinite(null_kappa) and null_kappa >= NULL_KAPPA_MAX:
        return "calibrated"
    return "acc"


def resolve(prediction: str, task_rule: str | None, available: Mapping[str, object]) -> str:
    """The rule used for one task: ``prediction`` unless it is ``auto`` (then the task's own);
    a rule whose inputs the logs lack falls back to ``acc``."""
    rule = task_rule or "acc" if prediction == AUTO else prediction
    return rule if rule in available else "acc"
