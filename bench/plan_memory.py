"""Measured peak memory of real training steps on the CPU next to :mod:`lib.run.plan`'s estimate.

    python bench/plan_memory.py            # every case, a table and a JSON line
    python bench/plan_memory.py --quick    # the same (the cases are small already)

Each case runs in a fresh process: two optimizer steps of ``lib.train.loop.train`` (fp32, AdamW)
on a random Llama; the measured figure is the peak RSS during training minus the RSS before the
model was built. glibc's ``MALLOC_MMAP_THRESHOLD_`` is pinned so that freed tensors go back to the
system at once and RSS follows the live tensors (the default threshold moves and keeps freed
memory in the heap). Baseline: the estimate of :func:`lib.run.plan.train_memory` for the same shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    # name: model shape, micro-batch, what trains
    "full": dict(h=256, i=688, L=4, V=8000, B=4, T=512, gc=False, mode="full", accum=1),
    "full_gc_accum2": dict(h=256, i=688, L=6, V=16000, B=4, T=512, gc=True, mode="full", accum=2),
    "head_only": dict(h=256, i=688, L=4, V=32000, B=2, T=512, gc=False, mode="head", accum=1),
    # DPO's LoRA policy (06 dpo_method: lora): adapters on every projection train alone; a
    # micro-batch of 2 pairs is 4 sequences (chosen and rejected)
    "lora_adapters": dict(h=256, i=688, L=4, V=16000, B=4, T=512, gc=False, mode="lora", accum=1, r=16),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: ``5`` into /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    """Peak RSS since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(case: dict) -> dict:
    """Run in this process (a fresh one): measured bytes and the estimate."""
    import resource
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lib.run.plan import Shape, _lora_params, train_memory
    from lib.train.loop import Interrupted, TrainSpec, train
    torch.set_num_threads(2)
    c = case

    def loss_fn(mods, batch):
        return mods[0](input_ids=batch, labels=batch, use_cache=False).loss, {}

    # Warm-up: one step of a tiny model first, so that lazy imports and one-off allocations of
    # the training loop (accelerate, the optimizer's first call) fall outside the measured window
    # (seen once in CI: both cases read ~730 MB, the same constant, without it).
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    tiny_ids = torch.randint(0, 64, (2, 8))
    with tempfile.TemporaryDirectory() as d:
        try:
            train([tiny], lambda s, m, r, w: tiny_ids, loss_fn, TrainSpec(steps=2, lr=1e-4, report_to="none"), d,
                  stop_at=1)
        except Interrupted:
            pass
    del tiny
    reset = _reset_peak()
    rss0 = _rss()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=c["V"], hidden_size=c["h"], intermediate_size=c["i"],
                                         num_hidden_layers=c["L"], num_attention_heads=4, num_key_value_heads=4))
    if c["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if c["mode"] == "head":
        model.requires_grad_(False)
        model.lm_head.weight.requires_grad_(True)
    if c["mode"] == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=c["r"], lora_alpha=2 * c["r"], lora_dropout=0.0,
                                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    ids = torch.randint(0, c["V"], (c["B"], c["T"]), generator=torch.Generator().manual_seed(1))

    spec = TrainSpec(steps=3, lr=1e-4, grad_accum=c["accum"], report_to="none")
    with tempfile.TemporaryDirectory() as d:
        try:
            train([model], lambda s, m, r, w: ids, loss_fn, spec, d, stop_at=2)
        except Interrupted:
            pass
    peak = (_peak() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - rss0
    shape = Shape("llama", c["h"], c["L"], c["i"], 4, 4, c["V"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if c["mode"] == "lora":             # the plan's own count of the adapters must be the real one
        assert trainable == _lora_params(shape, {"lora_r": c["r"], "lora_targets": LORA_TARGETS}), trainable
    est = train_memory(shape, c["B"] * c["T"], trainable=trainable, mixed=False,
                       layers_saved=c["mode"] != "head", checkpointing=c["gc"], grad_accum=c["accum"])
    return {"measured": peak, "estimated": est.peak, "ratio": est.peak / peak,
            "parts": {k: v for k, v in vars(est).items() if k != "grad_accum"}}


def run_case(name: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{proc.stderr[-3000:]}")
    return {"case": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), help="measure one case in this process (internal)")
    ap.add_argument("--quick", action="store_true", help="same cases (kept for the bench test convention)")
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(measure(CASES[args.case])))
        return 0
    rows = [run_case(n) for n in CASES]
    print("| case | measured MiB | estimated MiB | estimate / measured |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['measured'] / 2**20:.0f} | {r['estimated'] / 2**20:.0f} | {r['ratio']:.2f} |")
    print(json.dumps({"bench": "plan_memory", "machine": {"cores": os.cpu_count()}, "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
