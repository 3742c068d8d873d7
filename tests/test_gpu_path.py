"""The CUDA path's wrong-number defects (../shared/docs/GPU_AUDIT.md, F1-F13), each shown on the
CPU: CPU autocast casts as CUDA autocast does, a fake device capability or dtype stands for the GPU,
and each test fails on the code the audit read (ee17a42)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lib.core import paths

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def tiny_llama(vocab=64):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


# ----------------------------------------------------------------------------- F1

def test_info_nce_is_fp32_under_bf16_autocast():
    """F1: at temperature 0.05 the similarity logits reach ~20, where bf16 steps by 0.125. Under
    autocast the loss and its gradient must be the fp32 ones (the old code: a bf16 matrix)."""
    from lib.modeling.losses import info_nce
    from lib.train.align_terms import masked_info_nce
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 48, generator=g)
    b = a + 0.4 * torch.randn(32, 48, generator=g)
    for fn in (lambda x, y: info_nce(x, y, 0.05), lambda x, y: masked_info_nce(x, y, torch.arange(32), 0.05)):
        x32, y32 = a.clone().requires_grad_(), b.clone().requires_grad_()
        ref = fn(x32, y32)
        ref.backward()
        x16, y16 = a.clone().requires_grad_(), b.clone().requires_grad_()
        with torch.autocast(**BF16):
            got = fn(x16, y16)
        got.backward()
        assert got.dtype == torch.float32
        assert got.item() == ref.item()
        assert torch.equal(x16.grad, x32.grad) and torch.equal(y16.grad, y32.grad)


# ----------------------------------------------------------------------------- F2

def test_the_loop_leaves_no_autocast_on_the_model_and_evaluates_in_its_precision(tmp_path):
    """F2: accelerate's prepare wraps ``model.forward`` in autocast on the object. After the loop
    the model computes in fp32 again outside autocast, and the step-0 evaluation (inside the loop)
    equals the same measurement made before training under the stage's compute context."""
    from lib.modeling.model import compute_context
    from lib.train.loop import TrainSpec, train
    model = tiny_llama()
    ids = (torch.arange(24).unsqueeze(0) * 7 + torch.arange(4).unsqueeze(1)) % 64

    def nll():
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    with compute_context("bf16", "cpu"):
        before = nll()
    fp32_before = nll()
    assert before != fp32_before                        # the two precisions do differ here
    spec = TrainSpec(steps=2, lr=1e-3, mixed_precision="bf16", report_to="none")
    r = train([model], lambda *a: ids, lambda mods, b: (mods[0](input_ids=b, labels=b).loss, {}), spec,
              tmp_path, eval_fn=lambda: {"nll": nll()})
    assert r["evals"][0] == {"step": 0, "eval": {"nll": before}}
    assert "_original_forward" not in model.__dict__ and "forward" not in model.__dict__
    out = model(input_ids=ids).logits
    assert out.dtype == torch.float32
    with torch.no_grad():                                # fp32 outside autocast: same as a plain forward
        plain = LlamaForCausalLM.forward(model, input_ids=ids).logits
    assert torch.equal(out.detach(), plain)


def test_dpo_reference_and_policy_agree_at_step_0_under_bf16():
    """F2 (DPO): the reference log-probs (before training) and the policy's (inside the loop's
    autocast) of the same weights must give reward 0, hence reward accuracy 0 and margin 0."""
    from lib.data.instructions import Example
    from lib.modeling.model import compute_context
    from lib.train.dpo import pair_logps, pair_summary
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)

    def ex(n):
        ids = torch.randint(3, 64, (n,), generator=g).tolist()
        return Example(ids=ids, mask=[0] * (n // 2) + [1] * (n - n // 2), lang="en")
    pairs = [(ex(12 + i % 5), ex(9 + i % 3)) for i in range(10)]
    with compute_context("bf16", "cpu"):
        ref = pair_logps(model, pairs, pad_id=0, batch_size=4, reference=True)
    with torch.autocast(**BF16):                         # as the loop evaluates the policy
        pol = pair_logps(model, pairs, pad_id=0, batch_size=4)
    s = pair_summary(pol, ref, 0.1, ["k"] * len(pairs))
    assert s["reward_accuracy"] == 0.0 and s["margin"] == 0.0
    fp32 = pair_logps(model, pairs, pad_id=0, batch_size=4)   # the old reference: fp32, so rewards were not 0
    assert pair_summary(pol, fp32, 0.1, ["k"] * len(pairs))["margin"] != 0.0


# ----------------------------------------------------------------------------- F3 / F4

def small_delta(model, rel=1e-3, seed=2) -> dict[str, torch.Tensor]:
    """A delta of ``rel`` times each weight's scale, for every 2-D weight."""
    g = torch.Generator().manual_seed(seed)
    return {n: rel * p.detach().abs().mean() * torch.randn(p.shape, generator=g)
            for n, p in model.named_parameters() if p.dim() == 2}


def surviving_share(before: dict, after: dict, delta: dict) -> float:
    """Share of the delta's norm that is there after: 1 when every bit of it was kept."""
    num = sum((after[k].float() - before[k].float() - d).norm() ** 2 for k, d in delta.items())
    den = sum(d.norm() ** 2 for d in delta.values())
    return float(1 - (num / den).sqrt())


def test_chat_vector_of_1e_3_survives_on_a_gpu_dtype(tmp_path, monkeypatch, tiny_assets):
    """F3: on CUDA ``load_model`` gives bf16 weights; a chat vector of ~1e-3 of the weight scale
    added to them mostly rounds away. The inference dtype is faked to bf16 (what a GPU gives):
    the vector must survive in the saved model (and the saved model be fp32)."""
    import lib.modeling.model as M
    from lib.core.stage import Config
    from lib.train.sft import add_chat_vector
    real = M.auto_dtype
    monkeypatch.setattr(M, "auto_dtype", lambda dev, dtype="auto": torch.bfloat16 if dtype == "auto" else real(dev, dtype))
    src = LlamaForCausalLM.from_pretrained(tiny_assets["model"])
    delta = small_delta(src)
    inst = LlamaForCausalLM.from_pretrained(tiny_assets["model"])
    with torch.no_grad():
        for n, p in inst.named_parameters():
            if n in delta:
                p += delta[n]
    inst.save_pretrained(tmp_path / "instruct")
    cfg = Config({"chat_vector_base": str(tiny_assets["model"]), "chat_vector_instruct": str(tmp_path / "instruct"),
                  "chat_vector_weight": 1.0, "chat_vector_rows": "overlap", "device": "cpu"})
    cfg.source = lambda v: v
    add_chat_vector(cfg, tiny_assets["model"], tmp_path / "out")
    out = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in out.parameters()} == {torch.float32}
    # the instruct-base difference itself has fp32 rounding of ~1e-7 relative: 0.999 survives
    assert surviving_share(src.state_dict(), out.state_dict(), delta) > 0.999


def test_lora_delta_of_1e_3_survives_the_qlora_merge(tmp_path, tiny_assets):
    """F4: a QLoRA adapter is merged into the base reloaded unquantised; in bf16 a delta of 1e-3
    of the weight scale mostly rounds away. It must survive in fp32."""
    from peft import LoraConfig, get_peft_model

    from lib.core.stage import Config
    from lib.train.pretrain import merge_adapter
    base = LlamaForCausalLM.from_pretrained(tiny_assets["model"])
    before = {k: v.clone() for k, v in base.state_dict().items()}
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                           lora_dropout=0.0, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.004)
    peft.save_pretrained(tmp_path / "adapter")
    delta = {}
    for n, m in peft.named_modules():
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
            w = (m.lora_B["default"].weight @ m.lora_A["default"].weight) * m.scaling["default"]
            delta[n.replace("base_model.model.", "") + ".weight"] = w.detach()
    scale = min(float(d.norm() / before[k].norm()) for k, d in delta.items())
    assert 1e-4 < scale < 1e-2                           # a small delta, as a real one is
    merged = merge_adapter(Config({"method": "qlora"}), peft, str(tiny_assets["model"]), tmp_path / "adapter")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert surviving_share(before, merged.state_dict(), delta) > 0.999


# ----------------------------------------------------------------------------- F7 / F11 / F8

def test_distributed_setups_that_would_train_something_else_are_refused():
    from lib.train.loop import check_distributed
    check_distributed("NO", "bf16", False)
    check_distributed("MULTI_GPU", "bf16", False)                       # DDP: anything goes
    check_distributed("FSDP", "no", True)                               # FSDP: fp32 full training only
    with pytest.raises(ValueError, match="inv_freq"):
        check_distributed("FSDP", "bf16", True)                         # F7
    with pytest.raises(ValueError, match="clips each shard"):
        check_distributed("FSDP", "no", False)                          # F7: partial training
    with pytest.raises(ValueError, match="DeepSpeed is not supported"):
        check_distributed("DEEPSPEED", "bf16", True)                    # F11
    assert not (paths.PARAMS / "accelerate" / "deepspeed_zero2.yaml").exists()
    fsdp = (paths.PARAMS / "accelerate" / "fsdp.yaml").read_text()
    assert "\nmixed_precision: no\n" in fsdp


def test_final_model_is_written_by_the_main_process_only(tmp_path, monkeypatch):
    """F8: every rank used to copy model/ and race on its rename; now rank 0 copies, all wait."""
    from types import SimpleNamespace

    import accelerate

    from lib.train.common import final_model
    calls = []

    class Rank1:
        is_main_process = False

        def wait_for_everyone(self):
            calls.append("barrier")
    monkeypatch.setattr(accelerate, "PartialState", Rank1)
    ck = tmp_path / "checkpoints" / "step-000002" / "model"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text("{}")
    cfg = SimpleNamespace(stage_dir=tmp_path)
    assert final_model(cfg, {"checkpoints": [str(ck.parent)]}) == tmp_path / "model"
    assert calls == ["barrier"] and not (tmp_path / "model").exists()
    monkeypatch.setattr(Rank1, "is_main_process", True)
    final_model(cfg, {"checkpoints": [str(ck.parent)]})
    assert (tmp_path / "model" / "config.json").exists() and calls == ["barrier", "barrier"]


# ----------------------------------------------------------------------------- F10

def test_frozen_english_tower_is_held_in_the_autocast_dtype(tiny_assets, tmp_path):
    """F10: the frozen English copy only runs under the training autocast: bf16 weights under
    bf16-mixed (half the memory), fp32 otherwise."""
    import yaml
    from conftest import EN_LINES, KO_LINES

    from lib.core.params import load_profile, stage_params
    from lib.core.stage import resolve
    from lib.train.contrastive import build
    ko, en = tmp_path / "p.ko", tmp_path / "p.en"
    ko.write_text("\n".join(KO_LINES[:20]) + "\n", encoding="utf-8")
    en.write_text("\n".join(EN_LINES[:20]) + "\n", encoding="utf-8")
    for precision, want in (("bf16-mixed", torch.bfloat16), ("fp32", torch.float32)):
        f = tmp_path / f"{precision}.yaml"
        f.write_text(yaml.safe_dump({"common": {"base_model": str(tiny_assets["model"]), "seed": 1},
                                     "03_stage1_contrastive": {
                                         "init_from": str(tiny_assets["model"]), "pairs_ko": str(ko), "pairs_en": str(en),
                                         "heldout_ko": str(ko), "heldout_en": str(en), "english_encoder": "frozen",
                                         "precision": precision, "steps": 1, "batch_size": 4, "report_to": "none"}}))
        prof = load_profile(f)
        cfg = resolve("03_stage1_contrastive", stage_params(prof, "03_stage1_contrastive", str(tmp_path / "run")))
        s = build(cfg)
        assert {p.dtype for p in s.english.parameters()} == {want}
        assert {p.dtype for p in s.model.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------- F13

def test_training_entry_points_run_without_notebook_packages(tmp_path):
    """F13: a GPU node may have torch and transformers but no nbformat/papermill: ``python -m
    lib.train --help`` runs and a stage's parameters still resolve (read from the notebook JSON)."""
    code = ("import sys; sys.modules['nbformat'] = None; sys.modules['papermill'] = None\n"
            "import runpy, contextlib, io\n"
            "from lib.core.params import load_profile, stage_params\nfrom lib.core.stage import resolve\n"
            "cfg = resolve('05_stage3_pretrain', stage_params(load_profile('params/micro.yaml'), '05_stage3_pretrain', 'x'))\n"
            "print('steps', cfg.steps)\n"
            "sys.argv = ['lib.train', '--help']\n"
            "try:\n    runpy.run_module('lib.train', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.PROJ_ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "steps 8" in r.stdout and "exit 0" in r.stdout and "python -m lib.train" in r.stdout


def test_metrics_record_the_precision(tiny_assets):
    from lib.modeling.model import precision_record
    assert precision_record("bf16-mixed", "cpu") == {"precision": "bf16-mixed", "weights": "float32",
                                                     "compute": "bfloat16 autocast over float32 weights",
                                                     "saved": "float32"}
    assert precision_record("auto", "cpu")["compute"] == "float32"
    assert json.dumps(precision_record("bf16", "cpu"))
