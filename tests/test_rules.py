"""Prediction rules (lib.eval.rules) and the yes/no agreement test of issue 18.

A scorer whose preferences are the same in both languages up to the option strings must agree
with itself under the default rule of a yes/no task (``calibrated``); the per-character rule
(lm-eval ``acc_norm``) and the raw sum read the option strings instead and do not. The scorer is
a fake lm-eval model run through the real harness on generated task YAMLs, 07's log writer and
08's paired rows, so the whole chain is tested without a model or a download.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from lib.analysis import paired as an
from lib.eval import harness as E
from lib.eval import rules
from lib.eval import tasks as ET

# Option strings' own log-likelihood under an empty prompt, per language (made up, but the shape
# real models show: the Korean labels cost more, and not in proportion to their characters).
PRIOR = {" no": -6.0, " yes": -2.0, " 아니요": -3.0, " 예": -7.0}
OPTION = {" no": 0, " yes": 1, " 아니요": 0, " 예": 1}
MARGIN = 1.5          # the believed option is this much more likely than the other, in both languages
BELIEF = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]   # item i: 1 = yes, 0 = no (the same in both languages)


class SameMindScorer(LM):
    """log p(option | prompt) = PRIOR[option] + (0 if option is the believed one else -MARGIN);
    the item is read from the prompt's ``#<i>``; the empty prompt gives PRIOR alone."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for r in requests:
            ctx, cont = r.args
            self.calls += 1
            if ctx == "":
                out.append((PRIOR[cont], False))
                continue
            i = int(re.search(r"#(\d+)", ctx).group(1))
            out.append((PRIOR[cont] + (0.0 if OPTION[cont] == BELIEF[i] else -MARGIN), False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError


def yes_no_pair(d: Path) -> dict:
    qs = {"en": "Do sentence A and sentence B of pair #{i} mean the same?",
          "ko": "쌍 #{i}의 문장 A와 문장 B는 같은 뜻인가요?"}
    labels = {"en": ["no", "yes"], "ko": ["아니요", "예"]}
    spec = {"format": "arc"}
    for lang in ET.LANGS:
        rows = [{"id": f"p{i}", "question": qs[lang].format(i=i),
                 "choices": {"text": labels[lang], "label": ["A", "B"]}, "answerKey": "AB"[i % 2]}
                for i in range(len(BELIEF))]
        f = d / f"yn_{lang}.jsonl"
        f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        spec[lang] = str(f)
    return spec


def test_choose_every_rule_by_hand():
    # raw: -3 > -4.5 -> 0; per char: -3/3 = -1 vs -4.5/2 -> 0; per token: -3/3 vs -4.5/1 -> 0;
    # calibrated: -3 - -1 = -2 vs -4.5 - -4 = -0.5 -> 1
    assert rules.choose([-3.0, -4.5], ["yes", "no"], n_tokens=[3, 1], prior=[-1.0, -4.0]) == {
        "acc": 0, "per_token": 0, "acc_norm": 0, "calibrated": 1}
    assert rules.choose([-6.0, -4.0], ["abcdef", "ab"], n_tokens=[6, 1]) == {
        "acc": 1, "per_token": 0, "acc_norm": 0}                   # -1/token beats -4/token
    with pytest.raises(ValueError, match="one positive token count"):
        rules.choose([-1.0, -2.0], ["a", "b"], n_tokens=[1, 0])
    with pytest.raises(ValueError, match="prediction must be one of auto, acc"):
        rules.check_rule("acc_bytes")


def test_yes_no_default_rule_agrees_where_per_character_does_not(tmp_path):
    pairs = ET.write_tasks({"yes_no": yes_no_pair(tmp_path)}, tmp_path / "st" / "tasks")
    assert pairs["yes_no"].fixed_labels() and pairs["yes_no"].rule == "calibrated"
    lm = SameMindScorer()
    res = E.run_harness(lm, pairs, tmp_path / "st" / "tasks", batch_size=4)
    assert lm.calls == 2 * len(BELIEF) * 2 * 2      # items x languages x options x (prompt, empty prompt)
    m = E.ModelSpec("fake", "baseline", None, None, "fake")
    entry = E.write_model_results(m, pairs, res, tmp_path / "st" / "results" / "fake", 0.0, None,
                                  n_tokens=lambda ctx, cont: len(cont.split()))
    # the per-sample log names the chosen option under each rule (issue 18, item 5)
    rec = json.loads(Path(entry["tasks"]["yes_no"]["ko"]["samples"]).read_text(encoding="utf-8").splitlines()[0])
    assert rec["rule"] == "calibrated" and rec["n_tokens"] == [1, 1]
    assert rec["chosen"] == {"acc": {"index": 0, "text": "아니요"}, "per_token": {"index": 0, "text": "아니요"},
                             "acc_norm": {"index": 0, "text": "아니요"}, "calibrated": {"index": 1, "text": "예"}}
    assert entry["tasks"]["yes_no"]["en"]["acc_mutual_info"] == 0.3   # BELIEF matches the A/B gold at items 3, 4, 9
    manifest = [{**entry, "run": "r", "run_dir": str(tmp_path)}]
    auto = an.paired_rows(manifest, "auto", n_boot=0)[0]
    assert auto["prediction"] == "calibrated" and auto["agreement"] == 1.0 and auto["kappa"] == 1.0
    by = auto["by_prediction"]
    # English always "yes" (2 chars cheaper per char), Korean always "아니요": no agreement at all
    assert by["acc_norm"]["agreement"] == 0.0 and by["acc"]["agreement"] == 0.0
    assert an.paired_rows(manifest, "acc_norm", n_boot=0)[0]["agreement"] == 0.0
    shown = an.rules_rows([auto])
    assert [r["rule"] for r in shown] == ["acc", "per_token", "acc_norm", "calibrated *"]


def test_answer_texts_default_to_raw_sum(tmp_path):
    spec = yes_no_pair(tmp_path)
    rows = [json.loads(line) for line in Path(spec["en"]).read_text(encoding="utf-8").splitlines()]
    rows[0]["choices"]["text"] = ["no way", "yes"]          # options differ by item: answer texts
    Path(spec["en"]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert ET.read_pair("p", spec).rule == "acc"
    assert ET.read_pair("p", {**spec, "rule": "per_token"}).rule == "per_token"
    with pytest.raises(ET.PairError, match=r"tasks\['p'\]\['rule'\]: prediction must be one of acc"):
        ET.read_pair("p", {**spec, "rule": "auto"})
