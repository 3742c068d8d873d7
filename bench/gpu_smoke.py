"""A few training steps of 03, 05 (full and QLoRA) and 06 on the 1.3B shape, on a GPU, with the
training loop the stages use: tokens/s, MFU and peak GPU memory next to :mod:`lib.run.plan`'s estimate.

    python bench/gpu_smoke.py                           # on a CUDA machine (random init, nothing downloaded)
    python bench/gpu_smoke.py --tiny                    # the same code on a tiny shape: runs on a CPU too
    python bench/gpu_smoke.py --peak-tflops 121         # a GPU missing from PEAKS: give its dense bf16 peak
    python bench/gpu_smoke.py --cases 05_full,06_lora --case-timeout 110 --total-timeout 250   # as gpu_check.sh

Without CUDA (and without ``--tiny``) it prints that it skipped and exits 0. The model is the
Sheared-LLaMA-1.3B shape with the merged 39,478-token vocab (``lib.run.plan.KNOWN_SHAPES``), built in
random fp32 weights on the device; batches are random token ids. Precision is the stages'
default (``lib.modeling.model.precision_settings("auto")``): fp32 master weights with bf16 autocast on CUDA.
Each case runs in a fresh process so peak memory is its own. Throughput counts the steps after the
first (which pays for CUDA kernels' warm-up).

**MFU** is model-FLOPs utilisation (:func:`model_flops_per_token` x tokens/s / the GPU's dense bf16
peak): the FLOPs the model needs for the loss and its gradients, nothing the implementation adds.

- matmuls: 6 x N (forward, input gradients, weight gradients) for trained weights, 4 x N for frozen
  ones that still pass gradients down (the base under LoRA/QLoRA); N counts the layers' matmuls,
  the LoRA adapters (r=64) and the LM head, but not the input embedding (a lookup, no FLOPs);
- the LM head counts only where the loss reads its logits: not in 03, which pools hidden states
  and asks the head for one position per row (``logits_to_keep=1``);
- causal attention (scores and weighted values, no weights): 3 x 2 x L x h x seq per token;
- gradient checkpointing's recomputed forward is *not* counted: that is **HFU** (hardware FLOPs),
  reported beside it (``hfu``: model FLOPs + one more forward of the checkpointed layers).

A GPU missing from :data:`PEAKS` gets "n/a" for MFU and HFU (give ``--peak-tflops``); H100 PCIe
(756), NVL (835) and SXM (989) are told apart by the device name.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHEARED = "princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT"
LORA_RANK = 64
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Dense bf16 tensor-core peak, TFLOP/s (NVIDIA datasheets; their "with sparsity" figures halved),
# matched in order against torch.cuda.get_device_name(): the first pattern that matches wins.
PEAKS: list[tuple[str, float, str]] = [
    (r"H100.*PCIe", 756.0, "H100 PCIe"),
    (r"H100.*NVL", 835.0, "H100 NVL"),
    (r"H100", 989.0, "H100 SXM"),            # e.g. "NVIDIA H100 80GB HBM3"
    (r"H200.*NVL", 835.0, "H200 NVL"),
    (r"H200", 989.0, "H200 / GH200"),
    (r"A100", 312.0, "A100"),
    (r"RTX A6000|\bA6000\b", 154.8, "RTX A6000"),
    (r"L40S", 362.0, "L40S"),
    (r"\bA10\b", 125.0, "A10"),
    (r"\bL4\b", 121.0, "L4"),
]

# stage: micro-batch rows x tokens (a6000.yaml's micro-batches), gradient checkpointing, method
CASES = {
    "03_contrastive": dict(rows=128, seq=128, gc=True, method="full"),        # 64 pairs x 2 languages
    "05_full": dict(rows=4, seq=2048, gc=True, method="full"),
    "05_qlora": dict(rows=4, seq=2048, gc=True, method="qlora"),
    "06_lora": dict(rows=8, seq=2048, gc=True, method="lora"),
}


def shape(tiny: bool):
    from lib.run.plan import KNOWN_SHAPES, Shape
    if tiny:
        return Shape("llama", 64, 2, 172, 4, 4, 1000)
    return Shape(**KNOWN_SHAPES[SHEARED]).with_vocab(39478)


# ----------------------------------------------------------------------------- FLOPs

def lora_params_per_layer(s, rank: int = LORA_RANK) -> int:
    """Adapter weights of one Llama layer with :data:`LORA_TARGETS`: ``rank x (in + out)`` per
    target (q, o: h -> h; k, v: h -> kv; gate, up: h -> i; down: i -> h)."""
    h, i, kv = s.hidden, s.intermediate, s.hidden * s.kv_heads // s.heads
    return rank * (2 * h + 2 * h + 2 * (h + kv) + 3 * (h + i))


def flops_per_token(s, seq: int, method: str, head_logits: bool = True, gc: bool = False) -> dict:
    """Model and hardware FLOPs per trained token of a ``s``-shaped Llama (duck-typed
    :class:`lib.run.plan.Shape`: ``hidden, layers, intermediate, heads, kv_heads, vocab, layer_linear``).

    ``method``: ``full`` (every weight trains) or ``lora`` / ``qlora`` (base frozen, adapters and
    the LM head train: ``modules_to_save``). ``head_logits``: whether the loss reads the LM head's
    logits at every position (False for 03). ``gc``: gradient checkpointing (hardware FLOPs only).
    Returns ``{"model", "hardware", "matmul", "attention", "recompute"}``.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be full, lora or qlora, got {method!r}")
    layers = s.layers * s.layer_linear
    head = s.vocab * s.hidden if head_logits else 0
    attn_fwd = 2 * s.layers * s.hidden * seq          # causal: QK^T and AV over seq/2 keys on average
    if method == "full":
        matmul = 6 * (layers + head)
        adapters = 0
    else:
        adapters = s.layers * lora_params_per_layer(s)
        matmul = 4 * layers + 6 * adapters + 6 * head
    recompute = (2 * (layers + adapters) + attn_fwd) if gc else 0
    model = matmul + 3 * attn_fwd
    return {"model": model, "hardware": model + recompute, "matmul": matmul, "attention": 3 * attn_fwd,
            "recompute": recompute}


def case_flops(name: str, s, tiny: bool = False) -> dict:
    c = _case(name, tiny)
    return flops_per_token(s, c["seq"], c["method"], head_logits=not name.startswith("03"), gc=c["gc"])


def peak_tflops(device_name: str, given: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it came from) of a device name; (None, why) when unknown."""
    if given:
        return float(given), "--peak-tflops"
    for pattern, tf, label in PEAKS:
        if re.search(pattern, device_name):
            return tf, label
    return None, f"{device_name!r} is not in gpu_smoke.PEAKS: pass --peak-tflops"


# ----------------------------------------------------------------------------- one case

def _case(name: str, tiny: bool) -> dict:
    c = dict(CASES[name])
    if tiny:
        c.update(rows=min(c["rows"], 8), seq=min(c["seq"], 64))
    return c


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
    model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, task_type="CAUSAL_LM",
                                             target_modules=LORA_TARGETS,
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

    from lib.modeling.losses import info_nce
    from lib.modeling.model import auto_device, precision_settings
    from lib.modeling.represent import hidden_states_of, pooled_vectors
    from lib.run.plan import train_memory
    from lib.train.loop import Interrupted, TrainSpec, train
    c = _case(name, tiny)
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
    fl = case_flops(name, s, tiny)
    mem = train_memory(s, tokens, trainable=trainable, mixed=mp == "bf16", checkpointing=c["gc"],
                       logit_tokens=(2 * c["rows"] if name.startswith("03") else None),
                       extra_weights=(8 * s.embed_params if frozen_base else 0.0),
                       quantized=c["method"] == "qlora")
    return {"case": name, "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "mixed_precision": mp,
            "params": s.params, "trainable": trainable, "tokens_per_step": tokens, "seconds_per_step": sec,
            "tokens_per_second": tokens / sec, "model_flops_per_token": fl["model"],
            "hardware_flops_per_token": fl["hardware"], "peak_bytes": peak, "estimated_bytes": mem.peak}


# ----------------------------------------------------------------------------- the table

def _fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def summarize(rows: list[dict], given_tflops: float | None = None) -> list[str]:
    """Add ``mfu``, ``hfu``, ``peak_tflops`` and ``peak_source`` to each successful row (None where
    the peak is unknown) and return the markdown table's lines. Never raises on a missing figure."""
    lines = ["| case | s/step | tokens/s | MFU | HFU | peak GiB | plan GiB | peak / plan |",
             "|---|---|---|---|---|---|---|---|"]
    notes = set()
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {str(r['error'])[:100]} | | | | | | |")
            continue
        tf, source = peak_tflops(r["device"], given_tflops) if r["device"] != "cpu" else (None, "cpu: no peak")
        r["peak_tflops"], r["peak_source"] = tf, source
        if tf is None and r["device"] != "cpu":
            notes.add(source)
        tps = r["tokens_per_second"]
        r["mfu"] = r["model_flops_per_token"] * tps / (tf * 1e12) if tf else None
        r["hfu"] = r["hardware_flops_per_token"] * tps / (tf * 1e12) if tf else None
        peak, est = r.get("peak_bytes"), r["estimated_bytes"]
        lines.append(f"| {r['case']} | {r['seconds_per_step']:.3f} | {tps:,.0f} | {_fmt(r['mfu'], '.3f')} | "
                     f"{_fmt(r['hfu'], '.3f')} | {_fmt(peak / 2**30 if peak else None, '.1f', '-')} | "
                     f"{est / 2**30:.2f} | {_fmt(peak / est if peak else None, '.2f', '-')} |")
    lines += [f"n/a: {n}" for n in sorted(notes)]
    return lines


def run_cases(cases: list[str], args) -> list[dict]:
    """Each case in a fresh process (its own peak memory), at most ``args.case_timeout`` s each and
    ``args.total_timeout`` s together: a case that would start too late is reported, not run, so the
    table and the JSON always come out."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    rows = []
    deadline = time.monotonic() + (args.total_timeout or float("inf"))
    for name in cases:
        limit = min(args.case_timeout, deadline - time.monotonic())
        if limit < 20:
            rows.append({"case": name, "error": f"not run: --total-timeout {args.total_timeout:g} s spent"})
            continue
        cmd = [sys.executable, __file__, "--case", name, "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=limit)
        except subprocess.TimeoutExpired:
            rows.append({"case": name, "error": f"timed out after {limit:.0f} s"})
            continue
        out = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not out:
            err = proc.stderr.strip().splitlines()
            rows.append({"case": name, "error": err[-1] if err else f"exit code {proc.returncode}, no output"})
            continue
        rows.append(json.loads(out[-1]))
    return rows


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (checks the script; runs on a CPU)")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per case (the first is warm-up)")
    ap.add_argument("--peak-tflops", "--tflops", dest="peak_tflops", type=float,
                    help="the GPU's dense bf16 peak TFLOP/s (default: looked up by its name in PEAKS)")
    ap.add_argument("--cases", help=f"comma-separated cases to run (default: all of {', '.join(CASES)}; "
                                    "05_qlora only on CUDA)")
    ap.add_argument("--case-timeout", type=float, default=1800, help="seconds per case before it counts as failed")
    ap.add_argument("--total-timeout", type=float,
                    help="seconds for all cases together; cases that would start later are reported as not run")
    ap.add_argument("--case", choices=sorted(CASES), help="run one case in this process (internal)")
    args = ap.parse_args(argv)
    if args.steps < 3:
        ap.error(f"--steps must be >= 3 (the first step is warm-up, the last one closes the clock), got {args.steps}")
    if args.case:
        print(json.dumps(run_case(args.case, args.tiny, args.steps)))
        return 0
    cuda = cuda_available()
    if not cuda and not args.tiny:
        print("no CUDA device: skipped (use --tiny to check the script on a CPU)")
        print(json.dumps({"bench": "gpu_smoke", "skipped": True, "machine": {"cores": os.cpu_count()}}))
        return 0
    cases = [c.strip() for c in (args.cases or ",".join(CASES)).split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        ap.error(f"--cases: choose among {', '.join(CASES)}, got {args.cases!r}")
    cases = [n for n in cases if cuda or CASES[n]["method"] != "qlora"]
    rows = run_cases(cases, args)
    print("\n".join(summarize(rows, args.peak_tflops)))
    print(json.dumps({"bench": "gpu_smoke", "skipped": False, "tiny": args.tiny,
                      "machine": {"cores": os.cpu_count()}, "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
