"""lib.analysis.agreement: every expected number below is worked out by hand in the comment next to it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lib.analysis import agreement as ag
from lib.core import markdown, stats
from lib.eval import samples

# Ten A-D items (0-3). Per item: gold, English prediction, Korean prediction -> split.
TEN = [  # id, gold, en, ko
    ("q0", 0, 0, 0),  # both_correct
    ("q1", 1, 0, 0),  # both_wrong_same
    ("q2", 1, 0, 1),  # only_ko_correct
    ("q3", 1, 1, 1),  # both_correct
    ("q4", 2, 1, 1),  # both_wrong_same
    ("q5", 2, 2, 2),  # both_correct
    ("q6", 2, 2, 3),  # only_en_correct
    ("q7", 3, 3, 3),  # both_correct
    ("q8", 1, 3, 0),  # both_wrong_different
    ("q9", 0, 0, 0),  # both_correct
]


def items_of(rows):
    return [stats.Item(*r) for r in rows]


def test_ten_items_split_accuracy_agreement_and_four_option_kappa():
    m = stats.paired_metrics(items_of(TEN), n_boot=0)
    assert m["n"] == 10
    assert m["acc_en"] == pytest.approx(0.6)  # q0 q3 q5 q6 q7 q9
    assert m["acc_ko"] == pytest.approx(0.6)  # q0 q2 q3 q5 q7 q9
    assert m["agreement"] == pytest.approx(0.7)  # all but q2 q6 q8
    assert {s: m[s] for s in stats.SPLITS} == pytest.approx(
        {"both_correct": 0.5, "both_wrong_same": 0.2, "both_wrong_different": 0.1,
         "only_en_correct": 0.1, "only_ko_correct": 0.1})
    # en label counts A4 B2 C2 D2, ko A4 B3 C1 D2: p_e = (16+6+2+4)/100 = 0.28;
    # kappa = (0.7-0.28)/(1-0.28) = 0.42/0.72 = 7/12.
    assert m["kappa"] == pytest.approx(7 / 12)


def test_kappa_textbook_two_category_example():
    # 50 items: 20 yes/yes, 15 no/no, 5 en-yes/ko-no, 10 en-no/ko-yes. p_o = 35/50 = 0.7;
    # en yes 25/50, ko yes 30/50: p_e = .5*.6 + .5*.4 = 0.5; kappa = (.7-.5)/(1-.5) = 0.4.
    pairs = [("yes", "yes")] * 20 + [("no", "no")] * 15 + [("yes", "no")] * 5 + [("no", "yes")] * 10
    items = [stats.Item(i, "yes", en, ko) for i, (en, ko) in enumerate(pairs)]
    m = stats.paired_metrics(items, n_boot=0)
    assert m["agreement"] == pytest.approx(0.7)
    assert m["kappa"] == pytest.approx(0.4)
    assert m["acc_en"] == pytest.approx(0.5) and m["acc_ko"] == pytest.approx(0.6)


def test_kappa_with_an_option_one_language_never_picks():
    # en A B C D, ko A B C C: p_o = 3/4; en counts 1,1,1,1, ko 1,1,2,0: p_e = (1+1+2+0)/16 = 1/4;
    # kappa = (3/4 - 1/4) / (3/4) = 2/3.
    items = items_of([(i, 0, en, ko) for i, (en, ko) in enumerate([(0, 0), (1, 1), (2, 2), (3, 2)])])
    assert stats.paired_metrics(items, n_boot=0)["kappa"] == pytest.approx(2 / 3)


def test_kappa_perfect_opposite_and_degenerate():
    perfect = items_of([(i, 0, p, p) for i, p in enumerate([0, 1, 2, 3, 1, 2])])
    assert stats.paired_metrics(perfect, n_boot=0)["kappa"] == pytest.approx(1.0)
    # en A B, ko B A: p_o = 0, p_e = 1/2 -> kappa = -1.
    opposite = items_of([(0, 0, 0, 1), (1, 0, 1, 0)])
    assert stats.paired_metrics(opposite, n_boot=0)["kappa"] == pytest.approx(-1.0)
    # Both languages always answer A: p_e = 1, kappa undefined -> nan (documented convention).
    constant = items_of([(i, i % 4, 0, 0) for i in range(8)])
    m = stats.paired_metrics(constant, n_boot=50)
    assert m["agreement"] == 1.0 and math.isnan(m["kappa"])
    assert all(math.isnan(x) for x in m["kappa_ci"])
    # Perfect agreement on A A B: a resample without the B item (p = (2/3)^3) has undefined kappa and
    # is left out; every other resample has kappa 1, so the interval is exactly [1, 1], not nan.
    mixed = items_of([(0, 0, 0, 0), (1, 0, 0, 0), (2, 1, 1, 1)])
    assert stats.paired_metrics(mixed, n_boot=200, seed=1)["kappa_ci"] == [1.0, 1.0]


def test_split_shares_sum_to_one_and_match_counts_on_random_predictions():
    rng = np.random.default_rng(3)
    rows = [(i, *rng.integers(0, 4, size=3).tolist()) for i in range(137)]
    m = stats.paired_metrics(items_of(rows), n_boot=0)
    counts = dict.fromkeys(stats.SPLITS, 0)
    for _, g, en, ko in rows:  # classify one by one, independently of the vectorised code
        if en == g and ko == g:
            counts["both_correct"] += 1
        elif en == g:
            counts["only_en_correct"] += 1
        elif ko == g:
            counts["only_ko_correct"] += 1
        else:
            counts["both_wrong_same" if en == ko else "both_wrong_different"] += 1
    assert {s: m[s] * 137 for s in stats.SPLITS} == pytest.approx(counts)
    assert sum(m[s] for s in stats.SPLITS) == pytest.approx(1.0)
    assert m["agreement"] == pytest.approx(m["both_correct"] + m["both_wrong_same"])
    assert m["acc_en"] == pytest.approx(m["both_correct"] + m["only_en_correct"])


def test_bootstrap_contains_point_is_seeded_and_narrows_with_more_items():
    small = items_of(TEN * 4)  # 40 items, same proportions as TEN
    big = items_of(TEN * 40)  # 400 items
    a, b, c = (stats.paired_metrics(small, n_boot=500, seed=s) for s in (7, 7, 8))
    assert a == b
    # 40 items give coarse percentiles, so one interval may coincide across seeds; kappa's won't.
    assert any(a[f"{name}_ci"] != c[f"{name}_ci"] for name in stats.CI_METRICS)
    large = stats.paired_metrics(big, n_boot=500, seed=7)
    for name in stats.CI_METRICS:
        lo, hi = a[f"{name}_ci"]
        assert lo <= a[name] <= hi and lo < hi, name
        assert large[f"{name}_ci"][1] - large[f"{name}_ci"][0] < 0.6 * (hi - lo), name


def test_bootstrap_equals_naive_recomputation_on_the_same_draws():
    items = items_of(TEN * 3)
    m = stats.paired_metrics(items, n_boot=200, seed=11, level=0.9)
    idx = np.random.default_rng(11).integers(0, len(items), size=(200, len(items)))
    per = [stats.paired_metrics([items[j] for j in row], n_boot=0) for row in idx]
    for name in stats.CI_METRICS:
        vals = np.array([p[name] for p in per])
        vals = vals[np.isfinite(vals)]
        assert m[f"{name}_ci"] == pytest.approx(list(np.percentile(vals, [5, 95]))), name


def test_no_bootstrap_gives_nan_intervals_and_empty_input_fails():
    m = stats.paired_metrics(items_of(TEN), n_boot=0)
    assert all(math.isnan(x) for name in stats.CI_METRICS for x in m[f"{name}_ci"])
    with pytest.raises(ValueError, match="no items"):
        stats.paired_metrics([])


# ---------------------------------------------------------------------------- join_by_id


def recs(rows, pred=1):
    return [{"id": r[0], "gold": r[1], "pred": r[1 + pred]} for r in rows]


def test_join_by_id_pairs_in_english_order_whatever_the_korean_order():
    en = recs(TEN, pred=1)
    ko = list(reversed(recs(TEN, pred=2)))
    items = ag.join_by_id(en, ko)
    assert [it.id for it in items] == [r[0] for r in TEN]
    assert items == items_of(TEN)
    # The {id: record} mapping from read_lm_eval_samples works too, with pred_key chosen.
    mapping = {r[0]: {"gold": r[1], "pred": -1, "pred_norm": r[2]} for r in TEN}
    ko_map = {r[0]: {"gold": r[1], "pred": -1, "pred_norm": r[3]} for r in TEN}
    assert ag.join_by_id(mapping, ko_map, pred_key="pred_norm") == items_of(TEN)


def test_join_by_id_names_ids_present_in_one_language_only():
    en = recs(TEN) + [{"id": f"extra{i}", "gold": 0, "pred": 0} for i in range(7)]
    ko = recs(TEN)[2:] + [{"id": "ko_only", "gold": 0, "pred": 0}]
    with pytest.raises(ValueError) as e:
        ag.join_by_id(en, ko)
    msg = str(e.value)
    assert "9 ids only in English: 'q0', 'q1', 'extra0', 'extra1', 'extra2' ... and 4 more" in msg
    assert "1 ids only in Korean: 'ko_only'" in msg
    assert "extra3" not in msg  # at most five named


def test_join_by_id_rejects_duplicates_and_gold_mismatch():
    ko = recs(TEN) + [{"id": "q3", "gold": 1, "pred": 2}]
    with pytest.raises(ValueError, match=r"duplicate ids in the Korean records \(1\): 'q3'"):
        ag.join_by_id(recs(TEN), ko)
    ko = recs(TEN)
    ko[4] = {"id": "q4", "gold": 3, "pred": 1}
    with pytest.raises(ValueError, match=r"differs .* for 1 ids: 'q4': en=2 ko=3"):
        ag.join_by_id(recs(TEN), ko)
    with pytest.raises(ValueError, match=r"English record 0 \(id 'q0'\) lacks \['pred_norm'\]"):
        ag.join_by_id(recs(TEN), recs(TEN), pred_key="pred_norm")
    with pytest.raises(ValueError, match=r"Korean record 2 has no 'id' key"):
        ag.join_by_id(recs(TEN), recs(TEN)[:2] + [{"gold": 0, "pred": 0}])


# ---------------------------------------------------------------------------- predictions


def test_predictions_from_logliks_length_normalisation_flips_the_answer():
    # raw: -5.0 is the largest -> 2; per length: -6/4=-1.5, -9/18=-0.5, -5/4=-1.25, -7/5=-1.4 -> 1.
    assert samples.predictions_from_logliks([-6.0, -9.0, -5.0, -7.0], [4, 18, 4, 5]) == (2, 1)
    assert samples.predictions_from_logliks([-6.0, -9.0, -5.0, -7.0], None) == (2, 2)
    assert samples.predictions_from_logliks([-1.0, -1.0], [1, 1]) == (0, 0)  # ties: first option
    with pytest.raises(ValueError, match="one positive length per choice"):
        samples.predictions_from_logliks([-1.0, -2.0], [3])
    with pytest.raises(ValueError, match="without NaN"):
        samples.predictions_from_logliks([])


def test_chars_and_bytes_differ_on_mixed_scripts():
    # "abc": 3 chars, 3 bytes; "가나": 2 chars, 6 bytes. Chars: -3/3=-1 vs -2.4/2=-1.2 -> 0;
    # bytes: -1 vs -2.4/6=-0.4 -> 1.
    choices, ll = ["abc", "가나"], [-3.0, -2.4]
    assert samples.predictions_from_logliks(ll, [samples.choice_length(c) for c in choices]) == (1, 0)
    assert samples.predictions_from_logliks(ll, [samples.choice_length(c, "bytes") for c in choices]) == (1, 1)
    with pytest.raises(ValueError, match="'chars' or 'bytes'"):
        samples.choice_length("x", "tokens")


# ---------------------------------------------------------------------------- lm-eval samples

# lm-eval >= 0.4.3 writes sanitized records: numbers as strings, arguments as a dict.
ARC_EN = {
    "doc_id": 0,
    "doc": {"id": "Mercury_7175875", "question": "What gives plants the energy to grow?",
            "choices": {"text": ["heat", "light from the sun", "wind", "water"],
                        "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "target": "1",
    "arguments": {f"gen_args_{i}": {"arg_0": "Question: What gives ...?\nAnswer:", "arg_1": f" {c}"}
                  for i, c in enumerate(["heat", "light from the sun", "wind", "water"])},
    "resps": [[["-6.0", "False"]], [["-9.0", "False"]], [["-5.0", "True"]], [["-7.0", "False"]]],
    "filtered_resps": [["-6.0", "False"], ["-9.0", "False"], ["-5.0", "True"], ["-7.0", "False"]],
    "filter": "none", "metrics": ["acc", "acc_norm"],
    "acc": 0.0, "acc_norm": 1.0,  # raw argmax 2 ("wind"), per character argmax 1 (gold)
}
# Older shape: floats and booleans, arguments as [context, continuation] lists, one extra nesting.
ARC_KO = {
    "doc_id": 0,
    "doc": {"id": "Mercury_7175875", "question": "식물이 자라는 에너지는 무엇인가?",
            "choices": {"text": ["열", "태양에서 오는 빛", "바람", "물"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B"},
    "target": 1,
    "arguments": [["질문: ...\n답:", f" {c}"] for c in ["열", "태양에서 오는 빛", "바람", "물"]],
    # per char: -3/1, -6.3/9=-0.7, -2/2=-1, -2.5/1 -> 1; raw argmax -2.0 -> 2.
    "filtered_resps": [[[-3.0, False]], [[-6.3, False]], [[-2.0, True]], [[-2.5, False]]],
    "acc": 0.0, "acc_norm": 1.0,
}


def sample(doc_id, doc, choices, logliks, target, **extra):
    return {"doc_id": doc_id, "doc": doc, "target": str(target),
            "arguments": {f"gen_args_{i}": {"arg_0": "ctx", "arg_1": f" {c}"} for i, c in enumerate(choices)},
            "filtered_resps": [[str(x), "False"] for x in logliks], **extra}


def test_parse_both_record_shapes():
    # null controls (issue 28): shortest option "heat" / "열" (first of the ties), longest "light from the sun"
    assert samples.parse_lm_eval_sample(ARC_EN) == ("Mercury_7175875", {"gold": 1, "pred": 2, "pred_norm": 1, "n_choices": 4,
                                                                   "null_shortest_chars": 0, "null_longest_chars": 1})
    assert samples.parse_lm_eval_sample(ARC_KO) == ("Mercury_7175875", {"gold": 1, "pred": 2, "pred_norm": 1, "n_choices": 4,
                                                                   "null_shortest_chars": 0, "null_longest_chars": 1})


def test_parse_strips_the_target_delimiter_like_lm_eval():
    # "ab" -2/2=-1.0 vs "abcdef" -5/6=-0.83 -> 1. Counting the leading space: -2/3=-0.67 vs -5/7 -> 0.
    rec = sample(3, {}, ["ab", "abcdef"], [-2.0, -5.0], 1)
    assert samples.parse_lm_eval_sample(rec)[1]["pred_norm"] == 1
    assert samples.parse_lm_eval_sample(rec, target_delimiter="")[1]["pred_norm"] == 0


def test_parse_ids_from_doc_key_function_or_doc_id():
    doc = {"link": "https://en.wikibooks.org/wiki/Foo", "question_number": 2, "correct_answer_num": "3"}
    rec = sample(17, doc, list("ABCD"), [-4.0, -3.0, -1.0, -2.0], 2, acc=1.0, acc_norm=1.0)
    assert samples.parse_lm_eval_sample(rec, key=samples.belebele_key) == (
        ("https://en.wikibooks.org/wiki/Foo", 2), {"gold": 2, "pred": 2, "pred_norm": 2, "n_choices": 4,
                                                     "null_shortest_chars": 0, "null_longest_chars": 0})
    assert samples.parse_lm_eval_sample(rec)[0] == 17
    # A text target is looked up among the choices.
    assert samples.parse_lm_eval_sample(dict(rec, target="C"))[1]["gold"] == 2


def test_parse_fails_clearly_on_bad_shapes_and_inconsistent_metrics():
    bad = dict(ARC_EN, filtered_resps=[["-6.0", "False"], "-9.0", ["-5.0", "True"], ["-7.0", "False"]])
    with pytest.raises(ValueError, match=r"filtered_resps\[1\]: expected \[loglik, is_greedy\]"):
        samples.parse_lm_eval_sample(bad)
    with pytest.raises(ValueError, match="4 log-likelihoods but 3 continuations"):
        samples.parse_lm_eval_sample(dict(ARC_KO, arguments=ARC_KO["arguments"][:3]))
    with pytest.raises(ValueError, match="no 'filtered_resps' field"):
        samples.parse_lm_eval_sample({k: v for k, v in ARC_EN.items() if k != "filtered_resps"})
    with pytest.raises(ValueError, match="target 'E' is neither"):
        samples.parse_lm_eval_sample(dict(ARC_EN, target="E"))
    # Recorded acc_norm (by characters) contradicts a by-bytes recomputation on mixed scripts.
    rec = sample(0, {}, ["abc", "가나"], [-3.0, -2.4], 0, acc=0.0, acc_norm=1.0)
    assert samples.parse_lm_eval_sample(rec)[1] == {"gold": 0, "pred": 1, "pred_norm": 0, "n_choices": 2,
                                               "null_shortest_chars": 1, "null_longest_chars": 0}
    with pytest.raises(ValueError, match="recorded acc_norm=1.0 .* length_unit='bytes'"):
        samples.parse_lm_eval_sample(rec, length_unit="bytes")


def test_read_jsonl_files_join_and_score(tmp_path):
    en_path, ko_path = tmp_path / "samples_arc.jsonl", tmp_path / "samples_ko_arc.jsonl"
    second = {"id": "Q2", "choices": {}}
    en_path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        ARC_EN, sample(1, second, list("ABCD"), [-1.0, -2.0, -3.0, -4.0], 0)]) + "\n\n", encoding="utf-8")
    ko_path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        sample(1, second, list("ABCD"), [-2.0, -1.0, -3.0, -4.0], 0), ARC_KO]) + "\n", encoding="utf-8")
    en, ko = samples.read_lm_eval_samples(en_path), samples.read_lm_eval_samples(ko_path)
    assert en == {"Mercury_7175875": {"gold": 1, "pred": 2, "pred_norm": 1, "n_choices": 4, "null_shortest_chars": 0, "null_longest_chars": 1},
                  "Q2": {"gold": 0, "pred": 0, "pred_norm": 0, "n_choices": 4, "null_shortest_chars": 0, "null_longest_chars": 0}}
    m = stats.paired_metrics(ag.join_by_id(en, ko), n_boot=0)  # Mercury: 2 vs 2; Q2: A vs B
    assert (m["agreement"], m["acc_en"], m["acc_ko"]) == (0.5, 0.5, 0.0)
    assert (m["both_wrong_same"], m["only_en_correct"]) == (0.5, 0.5)

    en_path.write_text(json.dumps(ARC_EN) + "\n" + json.dumps(ARC_EN) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"samples_arc.jsonl:2: duplicate id 'Mercury_7175875' "
                                         r"\(first at .*samples_arc.jsonl:1\)"):
        samples.read_lm_eval_samples(en_path)
    en_path.write_text(json.dumps(ARC_EN) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"samples_arc.jsonl:2: not valid JSON"):
        samples.read_lm_eval_samples(en_path)


# ---------------------------------------------------------------------------- tables


def test_summary_row_and_markdown_table():
    m = stats.paired_metrics(items_of(TEN), n_boot=0)
    row = ag.summary_row("sheared-1.3b", "05", "arc", m)
    assert list(row)[:6] == ["model", "stage", "task", "n", "acc_en", "acc_ko"]
    assert row["agreement"] == pytest.approx(0.7) and math.isnan(row["agreement_lo"])
    assert "agreement_ci" not in row
    with pytest.raises(ValueError, match="'agreement_ci' should be"):
        ag.summary_row("m", "s", "t", {"agreement_ci": [0.1]})
    rows = [{"model": "a|b", "n": 10, "agreement": 0.7, "kappa": float("nan")},
            {"model": "c", "n": np.int64(400), "agreement": np.float32(0.8125)}]
    assert markdown.to_markdown(rows, ["model", "n", "agreement", "kappa"], digits=2) == (
        "| model | n | agreement | kappa |\n"
        "|---|---:|---:|---:|\n"
        "| a\\|b | 10 | 0.70 | n/a |\n"
        "| c | 400 | 0.81 |  |\n")
    assert markdown.to_markdown([{"x": 1}]).splitlines()[0] == "| x |"
