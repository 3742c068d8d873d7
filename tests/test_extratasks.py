"""07's extra tasks (lib.eval.extratasks, lib.eval.toyextra) and 08's deltas against the base (lib.analysis.extradelta).

The harness test scores a local task YAML and a local group of two YAMLs with a tiny Llama, checks
the stored per-item scores against lm-eval's own aggregate, then adds a task to the finished
results and checks that only it is scored. The by-name path is the same code with lm-eval's
default index enabled (checked on the index, which is local: no download).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lib.analysis import extradelta as xd
from lib.core.hashing import digest
from lib.eval import extratasks as XT
from lib.eval import harness as E
from lib.eval import tasks as ET
from lib.eval import toyextra
from tests.test_evaluate import arc_pair, done, write_jsonl

TRAINED = ["Minsu lives in Busan.", "Jiho and Mina are friends."]
HELDOUT = ["Minsu and Jiho are friends.",        # fine
           "Minsu lives in Busan.",              # a training line: left out
           "Jiho met Mina on Monday.",           # fine
           "Mina and Jiho are friends.",         # fine (its swap is not a sentence of the set)
           "Yes yes.",                           # two equal words: no swap
           "Minsu and Jiho are friends."]        # twice: counted once


# ---------------------------------------------------------------------------- toy tasks


def test_minimal_pairs_swap_adjacent_words_and_leave_out_training_lines():
    assert toyextra.swapped("Yes yes.") == "yes Yes."                     # two words: the first may move
    assert toyextra.swapped("Yes Yes.") is None
    s = "Namjoon wrote a letter to Changmin."
    bad = toyextra.swapped(s)
    assert bad == "Namjoon wrote a to letter Changmin." and bad.split()[0] == "Namjoon"
    assert sorted(bad) == sorted(s)                                      # the same characters
    items, dropped = toyextra.minimal_pairs(HELDOUT, TRAINED, "t")
    assert [it["sentence"] for it in items] == ["Minsu and Jiho are friends.", "Jiho met Mina on Monday.",
                                                "Mina and Jiho are friends.", "Yes yes."]
    assert dropped == 1
    for it in items:
        assert it["choices"][it["gold"]] == it["sentence"] and it["choices"][1 - it["gold"]] != it["sentence"]
        assert not set(it["choices"]) & set(TRAINED)
    assert [it["id"] for it in items] == ["t-0000", "t-0001", "t-0002", "t-0003"]
    assert [it["gold"] for it in items] == [it["gold"] for it in toyextra.minimal_pairs(HELDOUT, TRAINED, "t")[0]]
    # a swap that is itself a training line is left out too
    assert toyextra.minimal_pairs(["Jiho met Mina on Monday."], ["Jiho met Mina Monday on."], "t") == ([], 1)


def fake_toy(toy: Path) -> Path:
    from lib.world.files import INSTRUCTIONS_FILE, TRAINING_FILES
    for rel in TRAINING_FILES:
        f = toy / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"instruction": TRAINED[0], "output": "x"}) + "\n" if rel == INSTRUCTIONS_FILE
                     else "\n".join(TRAINED) + "\n", encoding="utf-8")
    (toy / "data/heldout_pairs.en").write_text("\n".join(HELDOUT) + "\n", encoding="utf-8")
    (toy / "data/heldout_pairs.ko").write_text("민수 반츤 지호 노차 찬란.\n지호 츤타 미나 누즌 월요일.\n", encoding="utf-8")
    return toy


def test_toy_task_files_are_generated_fresh_and_absolute(tmp_path):
    toy = fake_toy(tmp_path / "run" / "00_toy_world")
    path, info = toyextra.write_task("en_syntax", toy, tmp_path / "out")
    assert info == {"task": "toy_en_syntax", "lang": "en", "n": 4, "dropped": 1,
                    "source": str(toy / "data/heldout_pairs.en")}
    cfg = yaml.safe_load(path.read_text())
    data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and len(data.read_text().splitlines()) == 4
    assert (cfg["task"], cfg["doc_to_text"], cfg["target_delimiter"]) == ("toy_en_syntax", "", "")
    before = (path.read_bytes(), data.read_bytes())
    d1 = XT.yaml_digest(path)
    toyextra.write_task("toy:en_syntax", toy, tmp_path / "out")
    assert (path.read_bytes(), data.read_bytes()) == before and XT.yaml_digest(path) == d1
    assert toyextra.write_task("ko_syntax", toy, tmp_path / "out")[1]["n"] == 2
    (toy / "data/stage3_en.txt").unlink()
    with pytest.raises(toyextra.ToyTaskError, match="stage3_en.txt does not exist.*every training file"):
        toyextra.write_task("en_syntax", toy, tmp_path / "out")
    with pytest.raises(toyextra.ToyTaskError, match="known: toy:en_syntax, toy:ko_syntax"):
        toyextra.check_name("toy:grammar")


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("value, message", [
    (["hellaswag"], "must map a language to a list"),
    ({"fr": ["x"]}, r"unknown language keys \['fr'\]"),
    ({"en": "hellaswag"}, "must be a list"),
    ({"en": ["hellaswag"], "ko": ["hellaswag"]}, "listed twice"),
    ({"en": [" hellaswag"]}, "not a task name or path"),
    ({"ko": ["toy:korean"]}, "is not a toy extra task"),
])
def test_bad_extra_tasks_say_what_is_wrong(value, message):
    with pytest.raises(XT.ExtraTaskError, match=message):
        XT.entries(value)


def test_kinds_metrics_and_yaml_names(tmp_path):
    assert [XT.kind_of(s) for s in ("hellaswag", "kobest_copa", "toy:en_syntax", "x.yaml", "{repo}/t/a",
                                    "data/t.yml")] == ["name", "name", "toy", "yaml", "yaml", "yaml"]
    assert XT.entries({"ko": ["kmmlu"], "en": ["mmlu", "hellaswag"]}) == [("en", "mmlu"), ("en", "hellaswag"),
                                                                         ("ko", "kmmlu")]
    with pytest.raises(XT.ExtraTaskError, match="exact_match,strict-match"):
        XT.check_metrics({"gsm8k": "a,b,c"})
    assert XT.metric_key("acc") == "acc,none" and XT.metric_key("exact_match,flexible") == "exact_match,flexible"
    grp = tmp_path / "g.yaml"
    grp.write_text("group: mine\ntask:\n  - a\n  - b\n")
    assert XT.yaml_task_name(grp) == "mine"
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(XT.ExtraTaskError, match="needs 'task: <name>'"):
        XT.yaml_task_name(tmp_path / "bad.yaml")
    x = XT.Extra("t", "en", "t.yaml", "yaml", None, "auto", "d")
    assert XT.choose_metric(x, ["acc,none", "acc_norm,none"]) == "acc_norm,none"
    assert XT.choose_metric(x, ["acc,none"]) == "acc,none"
    assert XT.choose_metric(x, ["exact_match,strict-match"]) == "exact_match,strict-match"
    with pytest.raises(XT.ExtraTaskError, match="'f1' is not a metric of t .it has acc,none"):
        XT.choose_metric(XT.Extra("t", "en", "t.yaml", "yaml", None, "f1", "d"), ["acc,none"])


def test_yaml_digest_follows_includes_and_data_files(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "a"}])
    (tmp_path / "base.yaml").write_text("output_type: multiple_choice\n")
    task = tmp_path / "t.yaml"
    task.write_text(f"include: base.yaml\ntask: t\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    "process_results: !function utils.process\n")
    d0 = XT.yaml_digest(task)
    write_jsonl(data, [{"q": "b"}])
    d1 = XT.yaml_digest(task)
    (tmp_path / "base.yaml").write_text("output_type: loglikelihood\n")
    d2 = XT.yaml_digest(task)
    assert len({d0, d1, d2}) == 3 and XT.yaml_digest(task) == d2


# ---------------------------------------------------------------------------- real lm-eval runs


def mc_task(d: Path, name: str, rows: list[dict], lang: str = "en") -> Path:
    """A local multiple-choice task YAML with its data (what a user writes)."""
    data = write_jsonl(d / f"{name}.jsonl", rows)
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{options}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}], "metadata": {"version": 1}}))
    return path


ROWS = [{"q": f"Question {i}: the cat sees the", "options": ["apple", "river", "house"], "gold": i % 3}
        for i in range(5)]


@pytest.mark.slow
def test_extra_tasks_scored_stored_and_added_incrementally(tmp_path, tiny_assets, monkeypatch):
    tasks = tmp_path / "tasks"
    one = mc_task(tasks / "one", "tiny_mc", ROWS)
    grp_dir = tasks / "grp"
    mc_task(grp_dir, "part_a", ROWS[:3])
    mc_task(grp_dir, "part_b", ROWS[1:])
    (grp_dir / "_grp.yaml").write_text("group: tiny_group\ntask: [part_a, part_b]\n"
                                       "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")
    sd = tmp_path / "st"
    pairs = ET.write_tasks({"tiny": arc_pair(tmp_path / "data")}, sd / "tasks")
    run = tmp_path / "run"
    ckpt = run / "04_stage2_lm_head/checkpoints/step-000002/model"
    shutil.copytree(tiny_assets["model"], ckpt)
    shutil.copytree(ckpt, run / "04_stage2_lm_head/model")       # the final model: same weights
    done(run / "04_stage2_lm_head")
    models = E.baseline_models([str(tiny_assets["model"])], str) + E.stage_models(run)
    extras = XT.resolve({"en": [str(one)], "ko": [str(grp_dir / "_grp.yaml")]}, {"tiny_mc": "acc"},
                        tmp_path, sd / XT.TASKS_DIR)
    assert [(x.name, x.lang, x.kind, x.metric) for x in extras] == [("tiny_mc", "en", "yaml", "acc"),
                                                                     ("tiny_group", "ko", "yaml", "auto")]
    calls = []
    real_run = XT.run_extra
    monkeypatch.setattr(XT, "run_extra", lambda lm, xs, **k: calls.append([x.name for x in xs]) or real_run(lm, xs, **k))
    before = E.evaluate_all(models, pairs, sd, device="cpu", batch_size=4, progress=False)   # pairs only
    assert all("extra" not in e for e in before) and not (sd / "extra").exists()
    # extras added to a finished run: scored alone (pairs kept), the final model reuses its checkpoint's
    manifest = E.evaluate_all(models, pairs, sd, device="cpu", batch_size=4, progress=False, extras=extras)
    assert calls == [["tiny_mc", "tiny_group"]] * 2
    assert [e["tasks"] for e in manifest] == [e["tasks"] for e in before]
    final = manifest[2]
    assert final["extra"]["tiny_mc"]["value"] == manifest[1]["extra"]["tiny_mc"]["value"]
    assert final["extra"]["tiny_mc"]["seconds"] == 0.0
    assert Path(final["extra"]["tiny_mc"]["samples"]["tiny_mc"]).parent == sd / "extra" / "04_stage2_lm_head"
    ex = manifest[0]["extra"]
    assert list(ex) == ["tiny_mc", "tiny_group"]
    assert ex["tiny_mc"]["metric"] == "acc,none" and ex["tiny_group"]["metric"] == "acc_norm,none"
    assert ex["tiny_mc"]["n"] == 5 and ex["tiny_group"]["n"] == 7 and ex["tiny_group"]["subtasks"] == ["part_a", "part_b"]
    res = json.loads((sd / "extra" / manifest[0]["name"] / "results_tiny_mc.json").read_text())
    assert ex["tiny_mc"]["value"] == pytest.approx(res["results"]["tiny_mc"]["acc,none"]) == ex["tiny_mc"]["lm_eval"]
    # the group: the pooled mean over its 7 items is lm-eval's size-weighted aggregate
    scores = xd.item_scores({**manifest[0], "run": "r"}, "tiny_group")
    assert len(scores) == 7 and ex["tiny_group"]["value"] == pytest.approx(sum(scores.values()) / 7)
    gres = json.loads((sd / "extra" / manifest[0]["name"] / "results_tiny_group.json").read_text())
    a, b = gres["results"]["part_a"]["acc,none"], gres["results"]["part_b"]["acc,none"]
    assert gres["results"]["tiny_group"]["acc,none"] == pytest.approx((3 * a + 4 * b) / 7)
    assert set(gres["results"]) == {"tiny_group", "part_a", "part_b"}
    # the same per-item scores 08 reads: every option scored after the prompt
    s = json.loads((sd / "extra" / manifest[0]["name"] / "samples_tiny_mc.jsonl").read_text().splitlines()[2])
    assert [a[1] for a in s["arguments"]] == [" apple", " river", " house"] and s["doc_id"] == 2
    assert s["acc"] == float(int(np.argmax([r[0] for r in s["filtered_resps"]])) == 2)

    # a finished run: nothing is scored again; a new extra task is scored alone (pairs kept)
    scored = []
    real = E.evaluate_model
    monkeypatch.setattr(E, "evaluate_model", lambda m, todo, *a, **k: scored.append(
        (sorted(todo), [x.name for x in k["extras"]])) or real(m, todo, *a, **k))
    calls.clear()
    assert E.evaluate_all(models, pairs, sd, device="cpu", progress=False, extras=extras) == manifest
    assert scored == [] and calls == []
    two = mc_task(tasks / "two", "tiny_mc2", ROWS[:2])
    more = XT.resolve({"en": [str(one), str(two)], "ko": [str(grp_dir / "_grp.yaml")]}, {"tiny_mc": "acc"},
                      tmp_path, sd / XT.TASKS_DIR)
    grown = E.evaluate_all(models, pairs, sd, device="cpu", batch_size=4, progress=False, extras=more)
    assert scored == [([], ["tiny_mc2"])] * 3 and calls == [["tiny_mc2"]] * 3
    assert grown[0]["tasks"] == manifest[0]["tasks"] and grown[0]["seconds"] == manifest[0]["seconds"]
    assert list(grown[0]["extra"]) == ["tiny_mc", "tiny_mc2", "tiny_group"]
    assert grown[0]["extra"]["tiny_mc"] == manifest[0]["extra"]["tiny_mc"]
    assert XT.stored(sd, manifest[0]["name"])["tasks"]["tiny_mc2"]["n"] == 2
    # an edited local task is refused (nothing scored) unless asked; then only it is scored
    mc_task(tasks / "two", "tiny_mc2", ROWS[1:3])
    edited = XT.resolve({"en": [str(one), str(two)]}, {}, tmp_path, sd / XT.TASKS_DIR)
    scored.clear()
    with pytest.raises(E.ChangedTask, match="tiny_mc2 changed"):
        E.evaluate_all(models, pairs, sd, device="cpu", progress=False, extras=edited)
    E.evaluate_all(models, pairs, sd, device="cpu", progress=False, extras=edited, rescore_changed=True)
    assert scored == [([], ["tiny_mc2"])] * 3
    # extra_checkpoints=False: every model but the intermediate checkpoints (the final model scores its own)
    scored.clear()
    sd2 = tmp_path / "st2"
    ET.write_tasks({"tiny": arc_pair(tmp_path / "data")}, sd2 / "tasks")
    few = E.evaluate_all(models, pairs, sd2, device="cpu", batch_size=4, progress=False, extras=edited[:1],
                         extra_checkpoints=False)
    assert [("extra" in e, e["kind"]) for e in few] == [(True, "baseline"), (False, "checkpoint"), (True, "stage")]
    assert scored == [(["tiny"], ["tiny_mc"]), (["tiny"], []), ([], ["tiny_mc"])]   # its pairs: copied
    assert few[2]["tasks"]["tiny"]["en"]["acc"] == few[1]["tasks"]["tiny"]["en"]["acc"]


@pytest.mark.slow
def test_by_name_tasks_use_lm_evals_own_index(monkeypatch):
    """The by-name path: names checked against lm-eval's default index (local, no download), and
    the TaskManager built with include_defaults only when some task is a name."""
    assert XT.unknown_names(["hellaswag", "truthfulqa_mc2", "arc_easy", "mmlu", "kobest_copa", "kmmlu",
                             "no_such_task"]) == ["no_such_task"]
    with pytest.raises(XT.ExtraTaskError, match="'no_such_task' not in lm-eval's task index"):
        XT.resolve({"en": ["no_such_task"]}, {}, "/tmp", "/tmp/unused")
    x = XT.resolve({"en": ["hellaswag"], "ko": ["kobest_copa"]}, {"kobest_copa": "acc"}, "/tmp", "/tmp/unused")
    assert [(e.name, e.kind, e.yaml, e.metric) for e in x] == [("hellaswag", "name", None, "auto"),
                                                              ("kobest_copa", "name", None, "acc")]
    assert x[0].digest == digest({"name": "hellaswag", "lm_eval": XT.lm_eval_version()})
    tm = XT.task_manager(x)
    assert {"hellaswag", "kobest_copa"} <= set(tm.all_tasks)
    local = XT.Extra("t", "en", "t.yaml", "yaml", "/tmp/somewhere/t.yaml", "auto", "d")
    seen = []
    monkeypatch.setattr(XT, "_manager", lambda include, defaults: seen.append((include, defaults)))
    XT.task_manager([local])
    XT.task_manager([local, x[0]])
    assert seen == [(("/tmp/somewhere",), False), (("/tmp/somewhere",), True)]


# ---------------------------------------------------------------------------- 08: deltas


def test_paired_delta_numbers():
    model, base = np.array([1, 1, 0, 1, 0, 1, 1, 1]), np.array([1, 0, 0, 1, 0, 0, 1, 1])
    d = xd.paired_delta(model, base, n_boot=0)
    assert (d["n"], d["base"], d["value"], d["delta"]) == (8, 0.5, 0.75, 0.25) and math.isnan(d["delta_lo"])
    b = xd.paired_delta(model, base, n_boot=2000, seed=3)
    assert b == xd.paired_delta(model, base, n_boot=2000, seed=3)
    # paired differences are 0 or +1 (two of eight +1): the interval stays in [0, 0.625]
    assert 0.0 <= b["delta_lo"] < 0.25 < b["delta_hi"] <= 0.625 and b["value_lo"] < 0.75 < b["value_hi"]
    same = xd.paired_delta(base, base, n_boot=500)
    assert (same["delta"], same["delta_lo"], same["delta_hi"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        xd.paired_delta(model[:3], base)


def fake_entry(tmp_path: Path, name: str, kind: str, values: list[float], task="toy_en_syntax",
               lang="en", metric="acc,none") -> dict:
    d = tmp_path / "extra" / name
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"samples_{task}.jsonl"
    f.write_text("".join(json.dumps({"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": v}) + "\n"
                         for i, v in enumerate(values)))
    return {"run": "r", "run_dir": str(tmp_path), "name": name, "kind": kind, "stage": None if kind == "baseline" else name,
            "step": None, "tasks": {}, "extra": {task: {"lang": lang, "metric": metric, "subtasks": [task],
                                                        "samples": {task: str(f)}, "n": len(values)}}}


def test_delta_rows_markdown_and_figure(tmp_path):
    base = fake_entry(tmp_path, "baseline-toy", "baseline", [1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    s4 = fake_entry(tmp_path, "04_stage2_lm_head", "stage", [1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
    ck = fake_entry(tmp_path, "04_stage2_lm_head-step-000004", "checkpoint", [1] * 10)
    ck["kind"], ck["step"] = "checkpoint", 4
    rows = xd.delta_rows([base, ck, s4], "baseline-toy", n_boot=1000, seed=0)
    assert [(r["model"], r["base"], r["value"], r["delta"], r["n"]) for r in rows] == [
        ("04_stage2_lm_head-step-000004", 0.8, 1.0, pytest.approx(0.2), 10),
        ("04_stage2_lm_head", 0.8, 0.5, pytest.approx(-0.3), 10)]
    r = rows[1]
    assert r["delta_lo"] < -0.3 < r["delta_hi"] <= 0.0 and r["lang"] == "en" and r["metric"] == "acc,none"
    md = xd.markdown(rows)
    assert "| toy_en_syntax (en, acc, n=10) |" in md and "step-000004" not in md   # final models only
    assert f"| 04_stage2_lm_head | 0.800 → 0.500: -0.300 [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}] |" in md
    xd.delta_figure(rows, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0
    with pytest.raises(ValueError, match="base model 'baseline-x' is not among 07's models"):
        xd.delta_rows([base, s4], "baseline-x")
    short = fake_entry(tmp_path, "05_stage3_pretrain", "stage", [1] * 9)
    with pytest.raises(ValueError, match="1 items are scored for only one"):
        xd.delta_rows([base, short], "baseline-toy")
    assert xd.delta_rows([{**base, "extra": {}}], "baseline-toy") == []


# ---------------------------------------------------------------------------- lib.run.check


def real_model_profile(tmp_path: Path, tiny_assets, extra: str) -> Path:
    en = write_jsonl(tmp_path / "en.jsonl", [{"id": "q", "question": "Which animal sees the river?",
                                              "choices": {"text": ["cat", "dog"], "label": ["A", "B"]}, "answerKey": "A"}])
    ko = write_jsonl(tmp_path / "ko.jsonl", [{"id": "q", "question": "어느 동물이 강을 보나요?",
                                              "choices": {"text": ["고양이", "개"], "label": ["A", "B"]}, "answerKey": "A"}])
    f = tmp_path / "p.yaml"
    f.write_text(f"common:\n  base_model: {tiny_assets['model']}\n07_benchmark_eval:\n  baselines: []\n"
                 f"  tasks: {{t: {{en: {en}, ko: {ko}, format: arc}}}}\n{extra}", encoding="utf-8")
    return f


def test_check_names_missing_yamls_toy_tasks_without_a_toy_world_and_stray_metrics(tmp_path, tiny_assets):
    from lib.core.params import load_profile
    from lib.run.check import check_profile
    good = mc_task(tmp_path / "t", "tiny_mc", ROWS)
    f = real_model_profile(tmp_path, tiny_assets, f"  extra_tasks: {{en: [{good}, {tmp_path}/nope.yaml], "
                                                  "ko: [toy:ko_syntax]}\n  extra_metric: {tiny_mc: acc, other: acc}\n")
    problems = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert problems == [
        f"{f}:6: 07_benchmark_eval.extra_tasks: file not found: {tmp_path}/nope.yaml",
        f"{f}:6: 07_benchmark_eval.extra_tasks: 'toy:ko_syntax' is built from 00_toy_world's files, and this "
        "run has none: leave toy: tasks out of a real model's profile"]
    f = real_model_profile(tmp_path, tiny_assets, f"  extra_tasks: {{en: [{good}]}}\n  extra_metric: {{other: acc}}\n")
    assert check_profile(load_profile(f), ["07_benchmark_eval"]) == [
        f"{f}:7: 07_benchmark_eval.extra_metric: names ['other'], which are not in extra_tasks"]
    f = real_model_profile(tmp_path, tiny_assets, "  extra_tasks: {fr: [hellaswag]}\n")
    (problem,) = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert problem.startswith(f"{f}:6: 07_benchmark_eval.extra_tasks: unknown language keys ['fr']")
    f = real_model_profile(tmp_path, tiny_assets, f"  extra_tasks: {{en: [{good}]}}\n  extra_metric: {{tiny_mc: acc}}\n")
    assert check_profile(load_profile(f), ["07_benchmark_eval"]) == []


@pytest.mark.slow
def test_check_finds_task_names_missing_from_lm_evals_index(tmp_path, tiny_assets):
    from lib.core.params import load_profile
    from lib.run.check import check_profile
    f = real_model_profile(tmp_path, tiny_assets, "  extra_tasks: {en: [hellaswag, mmlu, hellaswag_typo], "
                                                  "ko: [kobest_copa, kmmlu]}\n")
    (problem,) = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert problem.startswith(f"{f}:6: 07_benchmark_eval.extra_tasks: 'hellaswag_typo' not in lm-eval's task index")
    prof = load_profile(Path(__file__).parents[1] / "params" / "a6000.yaml")
    from lib.core.params import stage_params
    extra = stage_params(prof, "07_benchmark_eval", "x")["extra_tasks"]
    assert XT.unknown_names(extra["en"] + extra["ko"]) == [] and len(extra["en"]) >= 3 and len(extra["ko"]) >= 3
