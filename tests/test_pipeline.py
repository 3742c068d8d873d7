"""The Papermill runner: runs stages, resumes, refuses silent overwrites, reports failures.

Runs 01 and 02 headless on a tiny random Llama built by a fixture (base_model is a local
folder, so 00_toy_world is not part of this run).
"""
from __future__ import annotations

import json

import pytest

from lib.cli.pipeline import main
from lib.core.params import ParamsError, load_profile, stage_params
from lib.run.pipeline import StageFailed, run_pipeline
from lib.run.stages import select_stages


def profile(tmp_path, assets, **overrides):
    merge = overrides.get("merge_mode", "all")
    text = (f"common:\n  base_model: {assets['model']}\n  seed: 3\n"
            f"01_vocab_merge:\n  korean_tokenizer: {assets['ko_sp']}\n  merge_mode: {merge}\n"
            f"  sample_ko: {assets['sample_ko']}\n  sample_en: {assets['sample_en']}\n"
            f"02_embedding_init:\n  sample_ko: {assets['sample_ko']}\n  sample_en: {assets['sample_en']}\n"
            f"  max_sample_lines: 20\n")
    f = tmp_path / f"p_{merge}.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def metrics(run, stage):
    return json.loads((run / stage / "metrics.json").read_text())


@pytest.mark.slow
def test_runs_resumes_refuses_and_forces(tmp_path, tiny_assets):
    run = tmp_path / "run"
    f = profile(tmp_path, tiny_assets)
    plans = run_pipeline(f, run=str(run), only="01,02", progress=False)
    assert [p.action for p in plans] == ["run", "run"]
    for stage in ("01_vocab_merge", "02_embedding_init"):
        d = run / stage
        assert (d / "DONE").exists() and (d / f"{stage}.ipynb").exists() and (d / "config.json").exists()
        assert any((d / "figures").glob("*.png"))
    m1, m2 = metrics(run, "01_vocab_merge"), metrics(run, "02_embedding_init")
    assert m1["merged_vocab_size"] == m1["base_vocab_size"] + m1["added_pieces"] > m1["base_vocab_size"]
    assert m1["ko_tokens_per_char"]["after"] < m1["ko_tokens_per_char"]["before"]
    assert m2["merged_vocab_size"] == m1["merged_vocab_size"]
    assert m2["en_logit_max_abs_diff"] == 0.0 and m2["reload_logit_max_abs_diff"] == 0.0
    assert json.loads((run / "02_embedding_init" / "config.json").read_text())["params"]["seed"] == 3

    # same config again: both skipped (resume)
    assert [p.action for p in run_pipeline(f, run=str(run), only="01,02", progress=False)] == ["skip", "skip"]
    # changed config: refused, nothing touched
    f2 = profile(tmp_path, tiny_assets, merge_mode="hangul")
    stamp = (run / "01_vocab_merge" / "DONE").read_text()
    with pytest.raises(ParamsError, match="parameters changed"):
        run_pipeline(f2, run=str(run), only="01,02", progress=False)
    assert (run / "01_vocab_merge" / "DONE").read_text() == stamp
    # forced: both redone with the new config
    plans = run_pipeline(f2, run=str(run), only="01,02", force=True, progress=False)
    assert [p.action for p in plans] == ["run", "run"]
    assert metrics(run, "01_vocab_merge")["merge_mode"] == "hangul"


def test_bad_value_is_refused_before_any_work(tmp_path, tiny_assets, capsys):
    run = tmp_path / "bad"
    f = profile(tmp_path, tiny_assets, merge_mode="everything")
    with pytest.raises(ParamsError, match=r"p_everything.yaml:6: 01_vocab_merge.merge_mode: must be one "
                                          r"of all, hangul, got 'everything'"):
        run_pipeline(f, run=str(run), only="01", progress=False)
    assert not run.exists()
    # the CLI turns it into one clear line and exit status 1
    assert main(["run", str(f), "--run", str(run), "--only", "01"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "merge_mode" in err[0]


@pytest.mark.slow
def test_failing_notebook_names_cell_and_keeps_partial_notebook(tmp_path, tiny_assets):
    """A failure only the stage can see (here a value slipped past the check) ends in one line
    naming the stage, the cell and the error, and keeps the executed notebook as valid JSON."""
    from lib.core.params import stage_params
    from lib.run.pipeline import Plan, run_stage
    run = tmp_path / "bad"
    f = profile(tmp_path, tiny_assets)
    params = dict(stage_params(load_profile(f), "01_vocab_merge", run), merge_mode="everything")
    with pytest.raises(StageFailed) as e:
        run_stage(Plan("01_vocab_merge", params, "run"), run, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("01_vocab_merge failed in cell ") and "ValueError: merge mode 'everything'" in msg
    nb = run / "01_vocab_merge" / "01_vocab_merge.ipynb"
    assert f"notebook {nb}" in msg and "log.txt" in msg
    json.loads(nb.read_text())
    assert not (run / "01_vocab_merge" / "DONE").exists()


def test_stage_selection(tmp_path, tiny_assets):
    prof = load_profile(profile(tmp_path, tiny_assets))
    assert "00_toy_world" not in select_stages(prof)          # base_model is a local folder
    assert select_stages(prof, only="02") == ["02_embedding_init"]
    assert select_stages(prof, start="02")[0] == "02_embedding_init"
    with pytest.raises(ParamsError, match="no stage 42"):
        select_stages(prof, only="42")


def test_cli_check_reports_bad_key(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("02_embedding_init:\n  initt: mean\n")
    assert main(["check", str(f)]) == 1
    assert "initt" in capsys.readouterr().err


def test_shared_stages_are_linked_only_when_identical(tmp_path, tiny_assets):
    from lib.core.hashing import config_hash
    from lib.core.io import write_json
    from lib.core.params import stage_params
    from lib.run.pipeline import link_shared_stages
    base = profile(tmp_path, tiny_assets)
    src = tmp_path / "src"
    (src / "01_vocab_merge").mkdir(parents=True)
    values = stage_params(load_profile(base), "01_vocab_merge", src)
    write_json(src / "01_vocab_merge" / "DONE", {"config_hash": config_hash(values)})
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\npipeline:\n  share: {{run: {src}, stages: [01]}}\n")
    assert link_shared_stages(load_profile(child), tmp_path / "dst") == ["01_vocab_merge"]
    assert (tmp_path / "dst" / "01_vocab_merge").resolve() == src / "01_vocab_merge"
    assert link_shared_stages(load_profile(child), tmp_path / "dst") == []          # idempotent
    child.write_text(f"extends: {base.name}\npipeline:\n  share: {{run: {src}, stages: [01]}}\n"
                     f"01_vocab_merge:\n  merge_mode: hangul\n")
    with pytest.raises(ParamsError, match="differ between the two profiles"):
        link_shared_stages(load_profile(child), tmp_path / "other")


def test_a_finished_07_adds_tasks_incrementally_and_08_follows(tmp_path):
    """Adding a task to a finished 07 through a profile plans an incremental rerun (its stored
    results kept, only DONE removed) and a fresh 08; any other change, or an edited existing
    task without rescore_changed, is refused before anything runs."""
    from lib.core.hashing import config_hash
    from lib.core.io import write_json
    from lib.run.pipeline import plan_run, run_stage
    stages = ["07_benchmark_eval", "08_agreement_analysis"]
    base = tmp_path / "base.yaml"
    base.write_text("common:\n  base_model: toy\n", encoding="utf-8")
    run = tmp_path / "run"
    prof = load_profile(base)
    for stage in stages:
        params = stage_params(prof, stage, run)
        sd = run / stage
        sd.mkdir(parents=True)
        write_json(sd / "config.json", {"params": params, "config_hash": config_hash(params)})
        write_json(sd / "DONE", {"config_hash": config_hash(params)})
    (run / "07_benchmark_eval" / "evals.json").write_text("[]")
    assert [p.action for p in plan_run(prof, run, stages)] == ["skip", "skip"]

    added = tmp_path / "added.yaml"
    added.write_text("extends: base.yaml\n07_benchmark_eval:\n  tasks+:\n"
                     "    yes_no: {en: a.jsonl, ko: b.jsonl, format: arc}\n", encoding="utf-8")
    plans = plan_run(load_profile(added), run, stages)
    assert [(p.action, p.incremental, p.fresh) for p in plans] == [("run", True, False), ("run", False, True)]
    assert "yes_no" in plans[0].params["tasks"]
    from unittest import mock
    with mock.patch("papermill.execute_notebook", side_effect=RuntimeError("stop here")):
        with pytest.raises(Exception, match="stop here"):
            run_stage(plans[0], run, progress=False)
    assert not (run / "07_benchmark_eval" / "DONE").exists()                # only DONE went
    assert (run / "07_benchmark_eval" / "evals.json").read_text() == "[]"   # stored results kept

    for stage in stages:   # finished again, as before
        params = stage_params(prof, stage, run)
        write_json(run / stage / "DONE", {"config_hash": config_hash(params)})
    other = tmp_path / "other.yaml"
    other.write_text("extends: base.yaml\n07_benchmark_eval:\n  num_fewshot: 2\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="its parameters num_fewshot changed"):
        plan_run(load_profile(other), run, stages)
    edited = tmp_path / "edited.yaml"
    edited.write_text("extends: base.yaml\n07_benchmark_eval:\n  tasks+:\n"
                      "    ghost: {en: a.jsonl, ko: b.jsonl, format: arc}\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="spec of its tasks ghost changed .*rescore_changed"):
        plan_run(load_profile(edited), run, stages)
    edited.write_text(edited.read_text() + "  rescore_changed: true\n", encoding="utf-8")
    assert plan_run(load_profile(edited), run, stages)[0].incremental
