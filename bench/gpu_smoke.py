"""A few training steps of 03, 05 (full and QLoRA) and 06 on the 1.3B shape, on a GPU, with the
training loop the stages use: tokens/s, MFU and peak GPU memory next to :mod:`lib.plan`'s estimate.

    python bench/gpu_smoke.py                  # on a CUDA machine (random init, nothing downloaded)
    python bench/gpu_smoke.py --tiny           # the same code on a tiny shape: runs on a CPU too
    python bench/gpu_smoke.py --steps 8 --tflops 989   # another GPU: give its bf16 dense peak

Without CUDA (and without ``--tiny``) it prints that it skipped and exits 0. The model is the
Sheared-LLaMA-1.3B shape with the merged 39,478-token vocab (``lib.plan.KNOWN_SHAPES``), built in
random fp32 weights on the device; batches are random token ids. Precision is the stages'
default (``lib.model.precision_settings("auto")``): fp32 master weights with bf16 autocast on CUDA.
Each case runs in a fresh process so peak memory is its own. Throughput counts the steps after the
first (which pays for CUDA kernels' warm-up). MFU = 6 x params x tokens/s (plus 2 x params for
recomputation under gradient checkpointing, 4 x params when the base is frozen) / peak FLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHEARED = "princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT"
PEAK_TFLOPS = {"A6000": 154.8, "A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0, "A10": 125.0}

# stage: micro-batch rows x tokens (a6000.yaml's micro-batches), gradient checkpointing, method
CASES = {
    "03_contrastive": dict(rows=128, seq=128, gc=True, method="full"),        # 64 pairs x 2 languages
    "05_full": dict(rows=4, seq=2048, gc=True, method="full"),
    "05_qlora": dict(rows=4, seq=2048, gc=True, method="qlora"),
    "06_lora": dict(rows=8, seq=2048, gc=True, method="lora"),
}


def shape(tiny: bool):
    from lib.plan import KNOWN_SHAPES, Shape
    if tiny:
        return Shape("llama", 64, 2, 172, 4, 4, 1000)
    return Shape(**KNOWN_SHAPES[SHEARED]).with_vocab(39478)


def build_model(s, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                      num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(device):
        return LlamaForCausalLM(cfg)


def _lora(model, method):
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"],
                                             modules_to_save=["embed_tokens", "lm_head"]))
    model.enable_input_require_grads()
    return model


def _qlora(s, device, tmp: Path):
    """The QLoRA path of stage 05: a saved random model loaded in 4 bits on this process's GPU."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from lib.train.pretrain import qlora_device_map
    build_model(s, "cpu").to(torch.bfloat16).save_pretrained(tmp / "base")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp / "base", quantization_config=q, dtype=torch.bfloat16,
                                                 device_map=qlora_device_map())
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)


def run_case(name: str, tiny: bool, steps: int) -> dict:
    """In this (fresh) process: train ``steps`` steps of case ``name``; figures and the estimate."""
    import torch
    from lib.losses import info_nce
    from lib.model import auto_device, precision_settings
    from lib.plan import train_memory
    from lib.represent import hidden_states_of, pooled_vectors
    from lib.train.loop import TrainSpec, train
    c = dict(CASES[name])
    if tiny:
        c.update(rows=min(c["rows"], 8), seq=min(c["seq"], 64))
    s, dev = shape(tiny), auto_device()
    cuda = dev.type == "cuda"
    _, mp = precision_settings("auto", dev)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = _qlora(s, dev, tmp) if c["method"] == "qlora" else build_model(s, dev)
        if c["gc"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if c["method"] in ("lora", "qlora"):
            model = _lora(model, c["method"])
        if name.startswith("03"):
            model.get_output_embeddings().weight.requires_grad_(False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, s.vocab, (c["rows"], c["seq"]), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

        def loss_fn(mods, b):
            if name.startswith("03"):
                vecs = pooled_vectors(hidden_states_of(mods[0], b), b["attention_mask"], layer=-1, pooling="mean")
                half = vecs.shape[0] // 2
                return info_nce(vecs[:half], vecs[half:]), {}
            return mods[0](**b, use_cache=False).loss, {}

        times = []

        def batch_at(step, micro, rank, world):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return batch

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        spec = TrainSpec(steps=steps, lr=1e-5, report_to="none", mixed_precision=mp, save_every=0)
        from lib.train.loop import Interrupted
        try:
            train([model], batch_at, loss_fn, spec, tmp / "out", stop_at=steps - 1)
        except Interrupted:           # stop before the final checkpoint: a smoke run saves nothing
            pass
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        peak = torch.cuda.max_memory_allocated() if cuda else None
    tokens = c["rows"] * c["seq"]
    sec = (times[-1] - times[1]) / max(len(times) - 2, 1)          # steps after the first
    frozen_base = c["method"] != "full"
    per_token = (4 if frozen_base else 6) * s.params + (2 * s.params if c["gc"] else 0)
    mem = train_memory(s, tokens, trainable=trainable, mixed=mp == "bf16", checkpointing=c["gc"],
                       logit_tokens=(2 * c["rows"] if name.startswith("03") else None),
                       extra_weights=(8 * s.embed_params if frozen_base else 0.0),
                       quantized=c["method"] == "qlora")
    return {"case": name, "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "mixed_precision": mp,
            "params": s.params, "trainable": trainable, "tokens_per_step": tokens, "seconds_per_step": sec,
            "tokens_per_second": tokens / sec, "flops_per_token": per_token, "peak_bytes": peak,
            "estimated_bytes": mem.peak}


def peak_tflops(device_name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (checks the script; runs on a CPU)")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per case (the first is warm-up)")
    ap.add_argument("--tflops", type=float, help="the GPU's dense bf16 peak TFLOP/s (default: by its name)")
    ap.add_argument("--case", choices=sorted(CASES), help="run one case in this process (internal)")
    args = ap.parse_args(argv)
    import torch
    if args.case:
        print(json.dumps(run_case(args.case, args.tiny, args.steps)))
        return 0
    if not torch.cuda.is_available() and not args.tiny:
        print("no CUDA device: skipped (use --tiny to check the script on a CPU)")
        print(json.dumps({"bench": "gpu_smoke", "skipped": True, "machine": {"cores": os.cpu_count()}}))
        return 0
    cases = [n for n in CASES if torch.cuda.is_available() or CASES[n]["method"] != "qlora"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    rows = []
    for name in cases:
        cmd = [sys.executable, __file__, "--case", name, "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
        if proc.returncode != 0:
            rows.append({"case": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("| case | tokens/s | MFU | peak GiB | plan GiB | peak / plan |\n|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error'][:80]} | | | | |")
            continue
        tf = peak_tflops(r["device"], args.tflops)
        r["mfu"] = r["flops_per_token"] * r["tokens_per_second"] / (tf * 1e12) if tf and r["peak_bytes"] else None
        peak = r["peak_bytes"]
        print(f"| {r['case']} | {r['tokens_per_second']:,.0f} | {r['mfu']:.3f} | {peak / 2**30:.1f} | "
              f"{r['estimated_bytes'] / 2**30:.1f} | {peak / r['estimated_bytes']:.2f} |" if peak else
              f"| {r['case']} | {r['tokens_per_second']:,.0f} | - | - | {r['estimated_bytes'] / 2**30:.2f} | - |")
    print(json.dumps({"bench": "gpu_smoke", "skipped": False, "tiny": args.tiny,
                      "machine": {"cores": os.cpu_count()}, "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
