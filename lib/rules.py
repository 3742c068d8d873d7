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

    from lib import rules
    rules.choose([-3.0, -4.5], ["yes", "no"], n_tokens=[1, 1], prior=[-2.0, -4.0])
    # {'acc': 0, 'per_token': 0, 'acc_norm': 0, 'calibrated': 1}
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RULES = ("acc", "per_token", "acc_norm", "calibrated")
AUTO = "auto"
KEY = {"acc": "pred", "per_token": "pred_per_token", "acc_norm": "pred_norm", "calibrated": "pred_calibrated"}
REPORTED = {"acc": "acc", "acc_norm": "acc_norm", "calibrated": "acc_mutual_info"}  # lm-eval's own metric


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


def default_rule(fixed_labels: bool) -> str:
    """The rule a task uses unless told otherwise. Options that are fixed labels whose strings
    differ by language (yes/no, true/false): ``calibrated``, since the label's own prior is the
    bias to remove. Options that are answer texts (ARC, Belebele, the toy world): ``acc``, lm-eval's
    reference metric for them; calibrating content answers rewards rare strings."""
    return "calibrated" if fixed_labels else "acc"


def resolve(prediction: str, task_rule: str | None, available: Mapping[str, object]) -> str:
    """The rule used for one task: ``prediction`` unless it is ``auto`` (then the task's own);
    a rule whose inputs the logs lack falls back to ``acc``."""
    rule = task_rule or "acc" if prediction == AUTO else prediction
    return rule if rule in available else "acc"
