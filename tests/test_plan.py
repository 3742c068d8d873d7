"""``python -m lib.pipeline plan``: parameter counts are exact, the memory estimate matches the
measured peak of real CPU training steps within 25%, the a6000 profile fits 48 GiB, and ``run``
refuses a stage that does not fit before anything runs."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from lib.cli.pipeline import main
from lib.core import paths
from lib.core.params import load_profile, stage_params
from lib.run.pipeline import run_pipeline
from lib.run.plan import KNOWN_SHAPES, GiB, PlanError, Shape, check_fits, plan_profile, train_memory
from lib.run.stages import select_stages

A6000 = paths.PARAMS / "a6000.yaml"
SHEARED = "princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT"


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_equal_the_real_models():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(hidden_size=2048, num_hidden_layers=24, intermediate_size=5504,
                                             num_attention_heads=16, num_key_value_heads=16, vocab_size=39478))
        gqa = LlamaForCausalLM(LlamaConfig(hidden_size=512, num_hidden_layers=3, intermediate_size=1376,
                                           num_attention_heads=8, num_key_value_heads=2, vocab_size=1000))
        neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=2048, num_hidden_layers=24, intermediate_size=8192,
                                                num_attention_heads=16, vocab_size=30080, tie_word_embeddings=False))
    assert Shape(**KNOWN_SHAPES[SHEARED]).with_vocab(39478).params == _n_params(llama) == 1_376_053_248
    assert Shape("llama", 512, 3, 1376, 8, 2, 1000).params == _n_params(gqa)
    assert Shape(**KNOWN_SHAPES["EleutherAI/polyglot-ko-1.3b"]).params == _n_params(neox)


def test_checkpointing_and_head_only_cut_activations():
    s = Shape(**KNOWN_SHAPES[SHEARED]).with_vocab(39478)
    full = train_memory(s, 8192, trainable=s.params, mixed=True)
    gc = train_memory(s, 8192, trainable=s.params, mixed=True, checkpointing=True)
    head = train_memory(s, 8192, trainable=s.embed_params, mixed=True, layers_saved=False)
    assert gc.activations < 0.15 * full.activations and gc.activations_alt == full.activations
    assert head.activations < 0.01 * full.activations
    # fp32 master weights + AdamW: 16 bytes per trained parameter before the autocast copies
    assert full.grads + full.optimizer == 12 * s.params
    assert full.weights == 4 * s.params + 2 * s.linear_params


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full", "full_gc_accum2", "head_only", "lora_adapters"])
def test_estimate_within_25_percent_of_measured_cpu_peak(case):
    spec = importlib.util.spec_from_file_location("plan_memory", paths.PROJ_ROOT / "bench" / "plan_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run_case(case)
    assert r["measured"] > 200 * 2**20                      # big enough to dwarf allocator noise
    assert 0.75 <= r["ratio"] <= 1.25, r


def test_a6000_fits_48_gib_and_names_its_tightest_stage(capsys):
    prof = load_profile(A6000)
    plans = plan_profile(prof, select_stages(prof), "plan_test")
    train = {sp.stage: sp for sp in plans if sp.memory}
    assert sorted(train) == ["03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain",
                             "06_instruction_tuning"]
    assert all(sp.peak < 48 * GiB for sp in plans)
    assert all(sp.disk > 0 and sp.tokens > 0 for sp in train.values())
    assert main(["plan", str(A6000), "--gpu-memory", "48"]) == 0
    out = capsys.readouterr().out
    tight = max(plans, key=lambda sp: sp.peak)
    assert f"tightest stage: {tight.stage}" in out and "**NO**" not in out
    assert out.count("\n| 0") == len(plans)


def test_chunked_loss_shrinks_the_logits_to_one_chunk():
    """Issue #26: with ``loss_chunk_tokens`` (default 1024) the logits term of 04 and 06 is one chunk
    (14 x 1024 x 39,478 bytes) plus the head's bf16 copy and fp32 gradient accumulator (6 V h):
    1.0 GiB each, down from 16.9 (04) and 8.4 (06) with the full logits; 05 moved from 4 x 32
    to 16 x 8 blocks per optimizer step on that basis."""
    prof = load_profile(A6000)
    plans = {sp.stage: sp for sp in plan_profile(prof, select_stages(prof), "plan_test")}
    V, h = 39478, 2048
    for stage in ("04_stage2_lm_head", "05_stage3_pretrain", "06_instruction_tuning"):
        assert plans[stage].memory.logits == 14 * 1024 * V + 6 * V * h < 2 * GiB
    p = stage_params(prof, "05_stage3_pretrain", "plan_test")
    assert (p["batch_size"], p["grad_accum"]) == (16, 8)
    full = train_memory(Shape(**KNOWN_SHAPES[SHEARED]).with_vocab(V), 32 * 1024, trainable=V * h, mixed=True,
                        layers_saved=False)
    assert round(full.logits / GiB, 1) == 16.9      # 04's term with the full logits


def test_document_packing_adds_the_block_diagonal_mask(tmp_path):
    """05 with ``packing: documents``: sdpa's [B, 1, T, T] mask (bool, and its bf16 bias under
    autocast) is added to the activations, 3 B T^2 bytes; nothing else moves."""
    f = tmp_path / "docs.yaml"
    f.write_text(f"extends: {A6000}\n05_stage3_pretrain:\n  packing: documents\n", encoding="utf-8")
    stage = "05_stage3_pretrain"
    plans = [{sp.stage: sp for sp in plan_profile(load_profile(x), [stage], "plan_test")}[stage] for x in (A6000, f)]
    p = stage_params(load_profile(f), stage, "plan_test")
    mask = 3 * p["batch_size"] * p["block_size"] ** 2
    assert plans[1].memory.activations - plans[0].memory.activations == mask
    assert plans[1].peak - plans[0].peak == mask and plans[1].flops == plans[0].flops
    assert "packing: documents" in "; ".join(plans[1].notes)


def test_the_old_05_batch_does_not_fit_and_the_error_names_the_knob(tmp_path):
    f = tmp_path / "big.yaml"      # 32 blocks of 2048 with the full logits (loss_chunk_tokens: 0)
    f.write_text(f"extends: {A6000}\n05_stage3_pretrain:\n  batch_size: 32\n  grad_accum: 4\n"
                 f"  loss_chunk_tokens: 0\n", encoding="utf-8")
    prof = load_profile(f)
    with pytest.raises(PlanError, match=r"05_stage3_pretrain needs about \d+\.\d GiB.*05_stage3_pretrain\.batch_size"):
        check_fits(prof, select_stages(prof), "plan_test", 48)
    check_fits(prof, ["03_stage1_contrastive", "06_instruction_tuning"], "plan_test", 48)   # the others fit


def test_dpo_is_planned_as_its_own_row_with_its_own_knobs(tmp_path):
    """06 with ``dpo: true`` adds a row: chosen + rejected per pair at 06's max_len; a LoRA policy
    trains its adapters only (SFT's LoRA also trains embeddings and head); a full one does not fit
    at a larger batch, and the error names DPO's knobs, not SFT's."""
    f = tmp_path / "dpo.yaml"
    f.write_text(f"extends: {A6000}\n06_instruction_tuning:\n  dpo: true\n", encoding="utf-8")
    prof = load_profile(f)
    plans = {sp.stage: sp for sp in plan_profile(prof, select_stages(prof), "plan_test")}
    sft, dpo = plans["06_instruction_tuning"], plans["06_instruction_tuning (dpo)"]
    p = {"batch": 4, "accum": 16, "steps": 900, "max_len": 2048}              # a6000.yaml's dpo_* values
    assert dpo.tokens == p["steps"] * p["accum"] * 2 * p["batch"] * p["max_len"]
    assert dpo.memory.grads < sft.memory.grads and dpo.memory.weights < sft.memory.weights
    assert "06_instruction_tuning (dpo)" not in {sp.stage for sp in plan_profile(load_profile(A6000), select_stages(
        load_profile(A6000)), "plan_test")}
    f.write_text(f"extends: {A6000}\n06_instruction_tuning:\n  dpo: true\n  dpo_method: full\n"
                 f"  dpo_batch_size: 16\n  dpo_grad_accum: 4\n  loss_chunk_tokens: 0\n", encoding="utf-8")   # full logits
    prof = load_profile(f)
    with pytest.raises(PlanError, match=r"06_instruction_tuning \(dpo\) needs about .*06_instruction_tuning\."
                                        r"dpo_batch_size \(raise dpo_grad_accum.*or dpo_method: lora"):
        check_fits(prof, select_stages(prof), "plan_test", 48)


@pytest.mark.shared_data
def test_run_refuses_before_any_stage_runs(tmp_path, capsys, shared_data, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):      # offline, check refuses the uncached Hub models first
        monkeypatch.delenv(var, raising=False)
    dev = paths.PARAMS / "dev_shared.yaml"          # a6000 with every input file present
    run = tmp_path / "run"
    with pytest.raises(PlanError, match="Nothing was run"):
        run_pipeline(dev, run=str(run), progress=False, gpu_memory=16)
    assert not any(p.is_dir() and p.name[:2].isdigit() for p in run.iterdir())
    assert main(["run", str(dev), "--run", str(tmp_path / "run2"), "--gpu-memory", "16"]) == 1
    assert "Turn " in capsys.readouterr().err


def test_a_base_model_of_unknown_shape_is_not_checked(tmp_path, capsys):
    """A Hub id neither known here nor cached: the run must not be blocked by the plan."""
    f = tmp_path / "p.yaml"
    f.write_text(f"extends: {paths.PARAMS / 'a6000.yaml'}\ncommon:\n  base_model: nobody/unknown-1b\n", encoding="utf-8")
    prof = load_profile(f)
    check_fits(prof, select_stages(prof), str(tmp_path / "fresh"), 1)
    assert "no memory check (plan: cannot tell the shape of 'nobody/unknown-1b'" in capsys.readouterr().out


@pytest.mark.parametrize("profile, said", [
    ("toy", "merged vocab 3,400 (1,900 + at most 1,500 Korean pieces; base from 00_toy_world's parameters, "
            "not yet run in {outputs}/toy)"),
    ("micro", "merged vocab 1,900 (1,100 + at most 800 Korean pieces; base from 00_toy_world's parameters, "
              "not yet run in {outputs}/micro)")])
def test_plan_on_the_shipped_toy_profiles_before_00_has_run(tmp_path, monkeypatch, capsys, profile, said):
    """Issue 27: ``plan params/toy.yaml`` on a fresh clone failed with a Hub error about the toy
    model's folder; the toy model's shape is 00's parameters, through the config 00 builds."""
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    assert main(["plan", str(paths.PARAMS / f"{profile}.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"- 01_vocab_merge: tokenizer only; {said.format(outputs=tmp_path / 'outputs')}" in out
    assert "| 05_stage3_pretrain | 0.1 |" in out or "| 05_stage3_pretrain | 0.0 |" in out


def test_the_toy_shape_is_the_model_00_builds(tmp_path):
    from lib.run.shapes import base_shape, toy_shape
    from lib.world.basemodel import BaseModelSpec, new_model
    prof = load_profile(paths.PARAMS / "micro.yaml")
    model = new_model(BaseModelSpec.micro(), 1100)            # micro.yaml's 00 section is BaseModelSpec.micro()
    assert toy_shape(prof, str(tmp_path)).params == _n_params(model) == 247_616
    # once 00 has run, its model folder and its Korean tokenizer's real size are used
    toy = tmp_path / "00_toy_world"
    model.config.vocab_size = 1000
    model.config.save_pretrained(toy / "model")
    (toy / "metrics.json").write_text('{"korean_vocab_size": 700}', encoding="utf-8")
    shape, korean, known = base_shape("toy", prof, str(tmp_path))
    assert (shape.vocab, korean, known) == (1000, 700, str(toy / "model"))


def test_plan_refuses_bad_device_figures_and_values_in_one_line_each(tmp_path, capsys):
    """Issue 27: a negative step count, batch_size 0 or a non-positive --mfu / --tflops /
    --gpu-memory never prints negative times; every problem is one error line, exit 1."""
    from lib.cli.pipeline import main
    f = tmp_path / "p.yaml"
    f.write_text(f"extends: {paths.PARAMS / 'a6000.yaml'}\n03_stage1_contrastive:\n  steps: -5\n"
                 "05_stage3_pretrain:\n  batch_size: 0\n", encoding="utf-8")
    assert main(["plan", str(f), "--mfu", "-1", "--tflops", "0", "--gpu-memory", "nan"]) == 1
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")] == [
        "error: --gpu-memory must be a positive number, got nan",
        "error: --tflops must be a positive number, got 0.0",
        "error: --mfu must be a positive number, got -1.0",
        f"error: {f}:3: 03_stage1_contrastive.steps: steps and grad_accum must be >= 1, got -5, 1",
        f"error: {f}:5: 05_stage3_pretrain.batch_size: must be >= 1, got 0"]
    assert "Traceback" not in err
