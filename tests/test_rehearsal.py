"""The rehearsal: ``params/rehearsal.yaml`` (a6000's code path) runs 01-08 on the real tokenizers
and the real files of ../shared/data, with tiny random stand-in models built here. It proves the
plumbing of the GPU run on a CPU; the scores are chance and are not asserted."""
from __future__ import annotations

import json
import time

import pytest

from lib.core import paths
from lib.core.params import load_profile
from lib.run.pipeline import run_pipeline
from lib.run.rehearsal import build_assets

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

TRAIN = ("03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain", "06_instruction_tuning")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, shared_data):
    run = tmp_path_factory.mktemp("rehearsal") / "run"
    build_assets(run / "assets", shared_data)
    t0 = time.time()
    plans = run_pipeline(paths.PARAMS / "rehearsal.yaml", run=str(run), progress=False)
    print(f"rehearsal 01-08: {time.time() - t0:.0f} s")
    return run, plans


def metrics(run, stage):
    return json.loads((run / stage / "metrics.json").read_text(encoding="utf-8"))


def params_of(run, stage):
    return json.loads((run / stage / "config.json").read_text(encoding="utf-8"))["params"]


def test_the_method_choices_are_a6000s():
    """Only sizes differ from a6000.yaml: every other value of every stage is the same."""
    sizes = {"steps", "warmup_steps", "eval_every", "save_every", "batch_size", "grad_accum", "max_len",
             "block_size", "max_eval_lines", "eval_lines_during", "eval_pairs", "eval_examples",
             "max_new_tokens", "max_sample_lines", "limit", "n_boot", "rep_pairs", "report_to"}
    inputs = {"base_model", "base_tokenizer", "baselines"}      # local stand-ins for Hub models
    a6000, rehearsal = load_profile(paths.PARAMS / "a6000.yaml"), load_profile(paths.PARAMS / "rehearsal.yaml")
    dev = load_profile(paths.PARAMS / "dev_shared.yaml")
    for stage, values in rehearsal.sections.items():
        for key, value in values.items():
            if key in sizes or key in inputs:
                continue
            assert value == dev.sections.get(stage, {}).get(key), (stage, key)
    assert a6000.sections["05_stage3_pretrain"]["gradient_checkpointing"] is True
    assert rehearsal.sections["06_instruction_tuning"]["method"] == "lora"


def test_every_stage_ran_on_the_real_files(rehearsal):
    run, plans = rehearsal
    assert [p.stage for p in plans] == [s for s in paths.stages() if s != paths.TOY_STAGE]
    for p in plans:
        assert (run / p.stage / "DONE").exists(), p.stage
    shared = str(paths.SHARED_DATA)
    where = lambda v: str(paths.resolve_path(v, run))  # noqa: E731
    assert where(params_of(run, "03_stage1_contrastive")["pairs_ko"]) == f"{shared}/parallel/news_dev.ko"
    assert [where(f) for f in params_of(run, "06_instruction_tuning")["data_files"]] == [
        f"{shared}/sft/lima_en.json", f"{shared}/sft/ko_alpaca_sample.json"]
    assert where(params_of(run, "07_benchmark_eval")["tasks"]["belebele"]["ko"]) == f"{shared}/bench/belebele/kor_Hang.jsonl"


def test_real_tokenizers_give_the_real_vocab(rehearsal):
    run = rehearsal[0]
    m1, m2 = metrics(run, "01_vocab_merge"), metrics(run, "02_embedding_init")
    assert (m1["base_vocab_size"], m1["merged_vocab_size"]) == (32000, 39478)    # Llama-2 + KoBERT
    assert m1["ko_tokens_per_char"]["after"] < 0.6 * m1["ko_tokens_per_char"]["before"]
    assert m2["merged_vocab_size"] == 39478 and m2["en_logit_max_abs_diff"] == 0.0


def test_training_stages_chain_and_keep_state_only_in_the_latest_checkpoint(rehearsal):
    from transformers import AutoModelForCausalLM
    run = rehearsal[0]
    prev = "02_embedding_init"
    for stage in TRAIN:
        m = metrics(run, stage)
        assert m["init_from"].endswith(f"{prev}/model"), stage
        ckpts = sorted((run / stage / "checkpoints").glob("step-*"))
        assert [c.name for c in ckpts] == ["step-000002", "step-000004"], stage
        assert not (ckpts[0] / "state").exists() and (ckpts[1] / "state").exists(), stage
        old = AutoModelForCausalLM.from_pretrained(ckpts[0] / "model")
        assert old.get_input_embeddings().weight.shape[0] == 39478
        assert params_of(run, stage)["precision"] == "auto"
        prev = stage
    assert metrics(run, "05_stage3_pretrain")["nonpad_fraction"] == 1.0
    assert metrics(run, "05_stage3_pretrain")["params_trainable"] == metrics(run, "05_stage3_pretrain")["params_total"]


def test_instruction_tuning_is_bilingual_with_lora(rehearsal):
    m = metrics(rehearsal[0], "06_instruction_tuning")
    assert m["method"] == "lora" and m["params_trainable"] < m["params_total"]
    assert m["data"]["records"] == 1029 + 1040                  # LIMA + the Korean sample
    assert m["data"]["by_lang"]["ko"] > 900 and m["data"]["by_lang"]["en"] > 900
    assert {k: v["realised_ratio"] for k, v in m["stream"].items()} == {"en": 0.5, "ko": 0.5}


def test_benchmarks_score_both_baselines_and_every_stage(rehearsal):
    run = rehearsal[0]
    evals = json.loads((run / "07_benchmark_eval" / "evals.json").read_text())
    names = [e["name"] for e in evals]
    assert names[:2] == ["baseline-llama", "baseline-neox"]
    assert {"02_embedding_init", *TRAIN} <= set(names)
    assert sum(e["kind"] == "checkpoint" for e in evals) == 2 * len(TRAIN)
    for e in evals:
        for task in ("arc_challenge", "belebele"):
            assert e["tasks"][task]["en"]["n"] == e["tasks"][task]["ko"]["n"] == 10, (e["name"], task)
    rows = json.loads((run / "08_agreement_analysis" / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == set(names)
    assert all(0 <= r["agreement"] <= 1 for r in rows)


def test_07_finds_the_arc_question_lima_holds_and_08_sets_it_apart(rehearsal):
    """06 trains on LIMA, whose record 593 asks ARC's Mercury_SC_416167; 07 names it, and 08 shows
    arc_challenge for every model without it (it is item 482, past the rehearsal's limit of 10)."""
    run = rehearsal[0]
    c = metrics(run, "07_benchmark_eval")["contamination"]
    assert c["dirty_by_pair"] == {"arc_challenge": 1, "belebele": 0} and c["dirty_items"] == 1
    rows = metrics(run, "08_agreement_analysis")["contamination"]
    evals = json.loads((run / "07_benchmark_eval" / "evals.json").read_text())
    assert {r["model"] for r in rows} == {e["name"] for e in evals} and {r["task"] for r in rows} == {"arc_challenge"}
    assert all(r["n"] == r["n_clean"] == 10 and r["acc_en"] == r["acc_en_clean"] for r in rows)
