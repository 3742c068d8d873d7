"""Null controls (lib.eval.nullcontrols, issue 28): a "model" that scores options by their length only
agrees with itself across languages because translated options keep their relative lengths.

Synthetic pairs: 400 items, 4 options each, English option lengths drawn at random and each Korean
option about half its English one (Hangul is denser) plus noise, so the length order mostly
survives translation. The "models" are per-sample logs in 07's shape (conditional and empty-prompt
log-likelihoods, token counts) read back through 08's own path (lib.analysis.paired.task_items,
paired_rows), so the chain from the logs to the beyond-null reading is tested, in under a second.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lib.analysis import paired as an
from lib.eval import nullcontrols as nc
from lib.eval import rules
from lib.eval import tasks as ET

N, K = 400, 4
PER_CHAR = 0.3          # log-likelihood per character: the length-only scorer prefers short options


def option_lengths(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    en = rng.integers(5, 60, size=(N, K))
    ko = np.maximum(2, np.round(en * 0.5 + rng.normal(0, 3, size=(N, K)))).astype(int)
    gold = rng.integers(0, K, size=N)
    return en, ko, gold


def texts(lengths: np.ndarray, char: str) -> list[list[str]]:
    return [[char * int(n) for n in row] for row in lengths]


def write_samples(path: Path, opts: list[list[str]], gold, cond, prior) -> str:
    """One 07-style per-sample record per item: option requests, then the empty-prompt ones."""
    lines = []
    for i, (o, g) in enumerate(zip(opts, gold)):
        args = [[f"Question #{i}\nAnswer:", " " + t] for t in o] + [["", " " + t] for t in o]
        lls = [[float(x), False] for x in (*cond[i], *prior[i])]
        lines.append(json.dumps({"doc_id": i, "doc": {"id": f"q{i}"}, "target": int(g), "arguments": args,
                                 "filtered_resps": lls, "n_tokens": [len(t) for t in o]}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def run_model(tmp: Path, name: str, noise: float = 0.0, knows: float = 0.0, seed: int = 1) -> dict:
    """Log-likelihood = -PER_CHAR x length (+ noise independent per language) (+ ``knows`` on the
    gold option); after the empty prompt: the length term alone (the model's own prior)."""
    en_len, ko_len, gold = option_lengths()
    rng = np.random.default_rng(seed)
    entry = {"name": name, "kind": "baseline", "stage": None, "step": None, "path": name, "run": "r",
             "run_dir": str(tmp), "tasks": {"pairs": {}}}
    for lang, lengths, char in (("en", en_len, "a"), ("ko", ko_len, "가")):
        prior = -PER_CHAR * lengths
        cond = prior + rng.normal(0, noise, size=prior.shape) * (noise > 0) + knows * (np.arange(K) == gold[:, None])
        f = write_samples(tmp / f"{name}_{lang}.jsonl", texts(lengths, char), gold, cond, prior)
        entry["tasks"]["pairs"][lang] = {"samples": f, "rule": "acc"}
    return entry


def readings(tmp: Path, entry: dict, n_boot: int = 300) -> tuple[dict, dict, dict]:
    items = an.load_items([entry])
    paired = an.paired_rows([entry], "acc", n_boot=n_boot, items=items, check_reported=False)
    controls = {c["control"]: c for c in nc.control_rows(paired, items, n_boot=n_boot)}
    beyond = {b["rule"]: b for b in nc.beyond_rows(paired, nc.load_vectors([entry]), n_boot=n_boot)}
    return paired[0], controls, beyond


def test_length_only_model_reads_its_null_and_zero_beyond(tmp_path):
    row, controls, beyond = readings(tmp_path, run_model(tmp_path, "length_only"))
    # today's reading: high agreement between languages from option length alone
    assert row["agreement"] > 0.7 and row["kappa"] > 0.6
    # the null controls equal it: the model's prior, and the shortest option (chars and tokens)
    for c in ("prior", "shortest_chars", "shortest_tokens"):
        assert controls[c]["agreement"] == row["agreement"] and controls[c]["kappa"] == row["kappa"]
        assert controls[c]["acc_en"] == row["acc_en"]
    assert set(controls) == set(rules.NULLS)
    # beyond the null: exactly 0 [0, 0], no item where the question moved it
    b = beyond["acc"]
    assert b["used"] and b["n_beyond"] == 0
    assert (b["beyond_agreement"], b["beyond_kappa"], b["beyond_kappa_lo"], b["beyond_kappa_hi"]) == (0, 0, 0, 0)


def test_noisy_length_model_is_zero_beyond_within_interval(tmp_path):
    row, controls, beyond = readings(tmp_path, run_model(tmp_path, "noisy", noise=2.0))
    b = beyond["acc"]
    assert row["kappa"] > 0.3                       # still reads as agreement today
    assert controls["prior"]["kappa"] > row["kappa"]
    assert b["n_beyond"] > 40                       # it does leave its prior, at random
    assert b["beyond_kappa_lo"] <= 0 <= b["beyond_kappa_hi"] and abs(b["beyond_kappa"]) < 0.08
    # the calibrated rule removes the prior: what is left is noise, independent per language
    cal = beyond["calibrated"]
    assert cal["kappa_lo"] <= 0 <= cal["kappa_hi"]


def test_model_that_reads_the_question_stays_above_the_null(tmp_path):
    row, controls, beyond = readings(tmp_path, run_model(tmp_path, "knows", noise=2.0, knows=20.0))
    b = beyond["acc"]
    assert row["acc_en"] > 0.8 and row["acc_ko"] > 0.8
    assert b["beyond_kappa_lo"] > 0.5               # the question, not the length, moves it
    # the model-free controls are the same for every model and read the pairs' own length bias
    assert 0.3 < controls["shortest_chars"]["kappa"] < 0.9
    table = nc.annotate(an.summary_rows([row]), list(controls.values()), list(beyond.values()))
    assert table[0]["beyond:kappa"] == b["beyond_kappa"]
    assert table[0]["null:prior:kappa"] == controls["prior"]["kappa"]
    md = nc.controls_markdown(list(controls.values()), list(beyond.values()))
    assert "(any: model-free)" in md and "beyond-null kappa" in md


def test_beyond_null_by_hand():
    # Two items, two options. Item 0: the question adds +3 to option 1 in both languages (the
    # model answers 1 in both, against its prior 0); item 1: nothing added (prior 0 in both).
    def v(ll, prior):
        return {"ll": np.array(ll, float), "prior": np.array(prior, float), "chars": np.ones(2), "n_tokens": None}
    vec = {"q0": {"en": v([-2.0, 0.0], [-2.0, -3.0]), "ko": v([-2.0, 0.0], [-2.0, -3.0])},
           "q1": {"en": v([-1.0, -2.0], [-1.0, -2.0]), "ko": v([-1.0, -2.0], [-1.0, -2.0])}}
    b = nc.beyond_null(vec, "acc", n_boot=0, n_perm=50)
    # observed: both items agree (1 = 1, 0 = 0). Null: Korean item 0 with item 1's residual (0, 0)
    # picks its prior 0 != English 1; Korean item 1 with item 0's residual (0, +3) picks 1 != 0;
    # a permutation that keeps each item's own residual agrees on both. So the null agreement is
    # the share of identity permutations (about 1/2 of 50) and the excess is 1 minus it.
    assert b["n_beyond"] == 1 and b["agreement"] == pytest.approx(1 - b["null_agreement"])
    assert 0.25 < b["null_agreement"] < 0.75
    assert b["kappa"] == pytest.approx(1.0)          # (1 - p_null) / (1 - p_null)
    assert math.isnan(b["kappa_ci"][0])               # no resamples: [nan, nan]
    # calibrated: the residual alone decides; per_token needs token counts the logs lack
    assert nc.beyond_null(vec, "calibrated", n_boot=0)["kappa"] == pytest.approx(1.0)
    assert nc.beyond_null(vec, "per_token", n_boot=0) is None
    no_prior = {i: {lang: {**x, "prior": None} for lang, x in d.items()} for i, d in vec.items()}
    assert nc.beyond_null(no_prior, "acc") is None


def test_default_rule_follows_the_length_controls(tmp_path):
    en_len, ko_len, gold = option_lengths()
    assert nc.length_kappa(texts(en_len, "a"), texts(ko_len, "가")) > 0.3
    # equal lengths in both languages (the toy cells' one-token names): no length control
    same = [["aa", "bb", "cc", "dd"]] * 20
    assert math.isnan(nc.length_kappa(same, same))
    assert rules.default_rule(False, float("nan")) == "acc"
    assert rules.default_rule(False, 0.08) == "acc" and rules.default_rule(False, 0.26) == "calibrated"
    assert rules.default_rule(True, 0.0) == "calibrated"
    spec = {"format": "arc"}
    for lang, lengths, char in (("en", en_len, "a"), ("ko", ko_len, "가")):
        rows = [{"id": f"q{i}", "question": f"q {i}?", "answerKey": "ABCD"[g],
                 "choices": {"text": [f"{char * int(n)}{j}" for j, n in enumerate(r)], "label": list("ABCD")}}
                for i, (r, g) in enumerate(zip(lengths, gold))]
        (tmp_path / f"{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                encoding="utf-8")
        spec[lang] = str(tmp_path / f"{lang}.jsonl")
    pair = ET.read_pair("lengths", spec)
    assert pair.rule == "calibrated" and pair.null_kappa > 0.3
    assert ET.pair_info(pair)["null_kappa"] == round(pair.null_kappa, 6)
    assert ET.read_pair("lengths", {**spec, "rule": "acc"}).rule == "acc"       # a task may still name its rule


def test_real_pairs_length_controls(shared_data):
    """The issue's figures on the real pairs (../shared/data/bench): the longest option in
    characters reads kappa 0.296 on ARC and 0.448 on Belebele (lower 95% bounds 0.259, 0.408);
    both answer-text tasks get the calibrated rule."""
    b = shared_data / "bench"
    arc = ET.read_pair("arc", {"en": str(b / "arc_challenge/en_test.jsonl"),
                               "ko": str(b / "arc_challenge/ko_test.jsonl"), "format": "arc"})
    bele = ET.read_pair("bele", {"en": str(b / "belebele/eng_Latn.jsonl"),
                                 "ko": str(b / "belebele/kor_Hang.jsonl"), "format": "belebele"})
    assert (arc.n, bele.n) == (1172, 900)
    assert arc.null_kappa == pytest.approx(0.259, abs=5e-4) and bele.null_kappa == pytest.approx(0.408, abs=5e-4)
    assert arc.rule == bele.rule == "calibrated"
