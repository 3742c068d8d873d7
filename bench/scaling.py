"""Training throughput against model width: tokens/s, model FLOP/s and peak memory of a Llama step.

One step is a forward with ``labels`` (HF's causal-LM loss), backward and an AdamW step on every
parameter, on random token ids (the data does not change the cost), with no padding. Each shape
runs in its own spawned process (``common.isolated``) so its peak memory is its own.

- CPU, fp32: hidden 128 / 256 / 512 / 1024 with 4 layers, hidden/64 heads, intermediate
  hidden x 5504/2048 (the 1.3B model's ratio, ~2.69x), vocab 39,478 (Llama-2 + KoBERT after the
  vocab merge), untied head, batch 2 x seq 256. Baseline of the ratios: hidden 128.
- GPU (with ``--gpu`` or whenever CUDA is there), bf16, ``attn_implementation="sdpa"``: the
  1.3B-shaped model (Sheared-LLaMA-1.3B after the merge: 24 layers, hidden 2048, intermediate 5504,
  16 heads, vocab 39,478), batch 4 x seq 2048 (stage 05's block), with model FLOPs utilisation
  against the GPU's peak dense bf16 FLOP/s (table below, or ``--peak-tflops``). Without CUDA the
  GPU part is skipped with a note and ``"gpu": null`` in the JSON. Memory: 1.38B parameters in
  bf16 with bf16 grads and AdamW states are ~11 GB; the activations of 4 x 2048 tokens without
  checkpointing come on top (not yet measured here): on a 48 GB card start with ``--gpu-grad-ckpt``
  or ``--gpu-batch 2``.

Model FLOPs per trained token (the PaLM / nanoGPT convention)::

    flops_per_token = 6 * N + 12 * L * T * d
    N = L * (4 d^2 + 3 d i) + d V      # every matmul weight: q, k, v, o (kv heads = heads),
                                       # gate/up/down, and the LM head (d x V); not the input
                                       # embedding table (a lookup) nor the RMSNorm gains
    L layers, d hidden, i intermediate, V vocab, T sequence length

``6 N``: 2 FLOPs per weight per token forward, 4 backward. ``12 L T d``: the attention scores and
the weighted sum of values, 2 * 2 * T * d per layer and token forward, times 3 with the backward,
counted over the full T x T square as PaLM does (a causal kernel may skip half). Not counted:
softmax, norms, activations, the optimizer, recomputation. Achieved GFLOP/s = flops_per_token x
tokens/s; MFU = that / peak.

    .venv/bin/python bench/scaling.py --quick                     # smoke run: ~20 s idle, ~40 s at load 5
    .venv/bin/python bench/scaling.py                              # CPU widths (~2 min on 2 cores)
    .venv/bin/python bench/scaling.py --gpu --skip-cpu             # the 1.3B shape on the GPU only
    .venv/bin/python bench/scaling.py --gpu --peak-tflops 756      # e.g. an H100 PCIe

CPU threads: 1 by default (see ``bench/contrastive.py``); ``--threads 0`` for torch's default.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

from common import Timer, emit, isolated, table

VOCAB = 39_478          # Llama-2 (32,000) + KoBERT's new pieces (7,478): the merged vocabulary

# Peak dense bf16 tensor-core TFLOP/s (no sparsity) from the vendors' data sheets; the first name
# found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A100", 312.0), ("RTX A6000", 154.8), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = VOCAB

    @classmethod
    def scaled(cls, hidden: int, layers: int = 4, vocab: int = VOCAB) -> "Shape":
        """Heads of 64 dims and the 1.3B model's MLP ratio (5504 / 2048)."""
        return cls(hidden, layers, max(1, hidden // 64), hidden * 5504 // 2048, vocab)

    def matmul_params(self) -> int:
        """N of the module docstring: every matmul weight, the LM head included."""
        d, i = self.hidden, self.intermediate
        return self.layers * (4 * d * d + 3 * d * i) + d * self.vocab

    def flops_per_token(self, seq_len: int) -> int:
        return 6 * self.matmul_params() + 12 * self.layers * seq_len * self.hidden

    def label(self) -> str:
        return f"{self.layers}L d{self.hidden} h{self.heads} i{self.intermediate}"


SHAPE_1B3 = Shape(hidden=2048, layers=24, heads=16, intermediate=5504)


def peak_tflops(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


# ----------------------------------------------------------------------------- one shape (child)

def train_steps(shape: dict, device: str, dtype: str, batch: int, seq_len: int, steps: int, warmup: int,
                threads: int = 0, grad_ckpt: bool = False) -> dict:
    """Time ``steps`` forward + backward + AdamW steps after ``warmup`` untimed ones."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    if threads:
        torch.set_num_threads(threads)
    s = Shape(**shape)
    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
                         max_position_embeddings=max(seq_len, 2048), bos_token_id=1, eos_token_id=2,
                         pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):                   # initialise in place: no fp32 CPU copy of 1.3B
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa")
    if grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(3, s.vocab, (batch, seq_len), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    cpu0 = time.process_time()
    with Timer() as t:
        for _ in range(steps):
            step()
        sync()
    cpu = time.process_time() - cpu0
    return {"seconds_per_step": t.seconds / steps, "tokens_per_second": batch * seq_len * steps / t.seconds,
            "cpu_per_wall": cpu / t.seconds, "params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(), "attn": model.config._attn_implementation}


def measure(shape: Shape, seq_len: int, **kw) -> dict:
    r, mem = isolated(train_steps, asdict(shape), seq_len=seq_len, **kw)
    fpt = shape.flops_per_token(seq_len)
    return {"shape": shape.label(), "hidden": shape.hidden, **r, **mem,
            "matmul_params": shape.matmul_params(), "mflops_per_token": fpt / 1e6,
            "gflops_per_second": fpt * r["tokens_per_second"] / 1e9}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hiddens", default="128,256,512,1024", help="CPU widths, comma-separated")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="timed steps per CPU shape")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per CPU run (0: torch's default, one per core; 1: see the docstring)")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    p.add_argument("--gpu", action="store_true", help="run the GPU part (default: whenever CUDA is there)")
    p.add_argument("--gpu-batch", type=int, default=4)
    p.add_argument("--gpu-seq-len", type=int, default=2048)
    p.add_argument("--gpu-steps", type=int, default=5)
    p.add_argument("--gpu-warmup", type=int, default=2)
    p.add_argument("--gpu-grad-ckpt", action="store_true", help="gradient checkpointing (as stage 05 on a6000)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="the GPU's peak dense bf16 TFLOP/s (0: look it up in PEAK_BF16_TFLOPS)")
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 128,256, 2 layers, seq 64, 1 step")
    args = p.parse_args(argv)
    if args.quick:
        args.hiddens, args.layers, args.seq_len, args.steps = "128,256", 2, 64, 1
        args.gpu_steps, args.gpu_warmup, args.gpu_seq_len = 2, 1, 512
    args.hiddens = [int(h) for h in args.hiddens.split(",")]
    return args


def gpu_part(args) -> dict | None:
    import torch
    if not torch.cuda.is_available():
        print("GPU part skipped: CUDA is not available here (it runs the 1.3B shape in bf16 on a GPU)"
              + (", although --gpu was given." if args.gpu else "."))
        return None
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_tflops(name)
    row = measure(SHAPE_1B3, args.gpu_seq_len, device="cuda", dtype="bfloat16", batch=args.gpu_batch,
                  steps=args.gpu_steps, warmup=args.gpu_warmup, grad_ckpt=args.gpu_grad_ckpt)
    row["device"] = name
    row["peak_tflops"] = peak
    row["mfu"] = row["gflops_per_second"] / 1e3 / peak if peak else None
    row["tflops_per_second"] = row["gflops_per_second"] / 1e3
    row["grad_ckpt"] = args.gpu_grad_ckpt
    if not peak:
        peak_note = "unknown: pass --peak-tflops for an MFU"
    else:
        peak_note = f"{peak:g} TFLOP/s dense bf16" + (" (--peak-tflops)" if args.peak_tflops else "")
    ckpt = ", gradient checkpointing" if args.gpu_grad_ckpt else ""
    print(f"\nGPU: {name}, bf16, sdpa, batch {args.gpu_batch} x seq {args.gpu_seq_len}{ckpt}; peak {peak_note}")
    print(table([{**row, "mfu": f"{row['mfu']:.1%}" if peak else "n/a"}],
                ["shape", "params", "tokens_per_second", "seconds_per_step", "mflops_per_token",
                 "tflops_per_second", "mfu", "peak_cuda_mb"]))
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    gpu = gpu_part(args)                 # runs whenever CUDA is there; --gpu only makes it explicit
    rows = []
    if not args.skip_cpu:
        print(f"\nCPU, fp32, batch {args.batch} x seq {args.seq_len}, vocab {VOCAB:,}, untied head:")
        for h in args.hiddens:
            r = measure(Shape.scaled(h, args.layers), args.seq_len, device="cpu", dtype="float32",
                        batch=args.batch, steps=args.steps, warmup=args.warmup, threads=args.threads)
            rows.append(r)
            print(f"  {r['shape']}: {r['tokens_per_second']:.0f} tokens/s, {r['gflops_per_second']:.1f} GFLOP/s, "
                  f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
        for r in rows:
            r["tokens_vs_base"] = r["tokens_per_second"] / rows[0]["tokens_per_second"]
            r["gflops_vs_base"] = r["gflops_per_second"] / rows[0]["gflops_per_second"]
        print()
        print(table(rows, ["shape", "params", "matmul_params", "mflops_per_token", "tokens_per_second",
                           "tokens_vs_base", "seconds_per_step", "gflops_per_second", "gflops_vs_base",
                           "peak_rss_mb", "cpu_per_wall"]))
        print(f"\n*_vs_base: over {rows[0]['shape']} (same run). mflops_per_token = (6 N + 12 L T d) / 1e6, "
              "N = matmul weights incl. the LM head; params includes the input embedding table. cpu_per_wall: "
              "CPU seconds per second timed; below the thread count, other processes took the cores.")
    return emit("scaling", config=vars(args), cpu=rows, gpu=gpu)


if __name__ == "__main__":
    main()
