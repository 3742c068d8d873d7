"""Chunked linear cross-entropy vs the full logits on the 1.3B head shape: peak memory and time.

    python bench/chunked_ce.py                          # 2048 tokens, chunks of 256, fp32, 1 thread
    python bench/chunked_ce.py --tokens 4096 --chunk 1024 --threads 2

One loss step (forward + backward, gradients of the hidden states and of the head's weight) of
hidden 2048 x vocab 39,478 (Sheared-LLaMA-1.3B after the KoBERT merge), 10% of the labels -100:
the baseline is today's path (``F.linear`` to the full logits, fp32 ``F.cross_entropy``), the
candidate :func:`lib.modeling.chunked_ce.linear_nll`. Each runs in its own process; its peak is
the process's peak RSS minus its RSS once the inputs exist (the loss's own memory), time the
median of ``--repeats`` steps after one warm-up. Printed as ratios candidate / baseline, same run.
CPU only: GPU figures are not measured here.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

HIDDEN, VOCAB = 2048, 39478


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(kind: str, tokens: int, chunk: int, repeats: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from lib.modeling.chunked_ce import linear_nll
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, HIDDEN, generator=g).requires_grad_(True)
    w = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).requires_grad_(True)
    t = torch.randint(0, VOCAB, (tokens,), generator=g)
    t[::10] = -100
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)      # the gradients exist in both runs
    base = rss_mib()

    def step():
        if kind == "full":
            loss = F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-100)
        else:
            nll = linear_nll(h, w, t, chunk_tokens=chunk)
            loss = nll.sum() / (t != -100).sum()
        loss.backward()
        return float(loss.detach())

    loss = step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "loss": loss, "peak_mib": peak - base, "seconds": statistics.median(times)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", choices=["full", "chunked"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one, a.tokens, a.chunk, a.repeats, a.threads)))
        return {}
    res = {}
    for kind in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--one", kind, "--tokens", str(a.tokens), "--chunk",
                              str(a.chunk), "--repeats", str(a.repeats), "--threads", str(a.threads)],
                             check=True, capture_output=True, text=True).stdout
        res[kind] = json.loads(out.strip().splitlines()[-1])
    full, ch = res["full"], res["chunked"]
    print(f"head {HIDDEN} x {VOCAB:,}, {a.tokens} tokens, chunk {a.chunk}, fp32, {a.threads} thread(s)")
    print(f"{'':8} {'loss':>10} {'peak MiB':>9} {'s/step':>8}")
    for r in (full, ch):
        print(f"{r['kind']:8} {r['loss']:10.6f} {r['peak_mib']:9.0f} {r['seconds']:8.3f}")
    ratios = {"peak_memory": ch["peak_mib"] / full["peak_mib"], "time": ch["seconds"] / full["seconds"],
              "loss_diff": abs(ch["loss"] - full["loss"])}
    print(f"chunked / full: peak memory {ratios['peak_memory']:.2f}x, time {ratios['time']:.2f}x, "
          f"|loss difference| {ratios['loss_diff']:.1e}")
    return {**res, "ratios": ratios}


if __name__ == "__main__":
    main()
