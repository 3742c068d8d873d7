"""Stage-1 contrastive training step against the batch size: does the in-batch-negatives loss scale?

Each step is exactly what stage 03 runs (``lib.train.contrastive``): the pairs of a
``PairBatches`` batch cut to their longest row, Korean and English stacked into one forward pass
(``stack_batches`` + ``Encoder``: hidden states with ``logits_to_keep=1``, mean pooling without BOS),
symmetric InfoNCE with in-batch negatives (``lib.modeling.losses.info_nce``), backward, grad-norm clip and
an AdamW step over what ``freeze_for_stage1`` leaves trainable (embeddings + layers; the LM head
frozen). Only accelerate is left out (on one CPU process it only wraps these calls).

The model is a randomly initialised ``LlamaForCausalLM`` in fp32 on CPU, built from a config
(default: hidden 256, 4 layers, 4 heads, intermediate 688 = hidden x 5504/2048 as in the 1.3B
model); the weights do not change the cost. Its vocabulary is the tokenizer's. The sentences are
real when ``../shared/data`` is there: the Ko-En news pairs (``parallel/news_dev``, those that
``params/dev_shared.yaml`` trains stage 03 on) tokenized with the merged Llama-2 + KoBERT tokenizer
(``merge_mode: all``, 39,478 pieces: what stage 03 sees after 01) or, with ``--tokenizer llama2``,
the bare Llama-2 one (Korean falls apart into bytes: ~2.6x longer). Without it, toy-world bridge
pairs with the toy tokenizers merged the same way.

Every batch size runs in its own spawned process (``common.isolated``), so its peak RSS is its
own. Per batch size: pairs/s, s/step, the step split into forward / backward / optimizer, the cost
of InfoNCE alone (forward + backward on [B, d] vectors: the B x B similarity part) and its share
of the step, the share of padded positions in the forward pass (each batch is cut to its longest
sentence, Korean and English to one width), peak memory, and pairs/s relative to the smallest
batch (the baseline).

    .venv/bin/python bench/contrastive.py --quick                    # smoke run: ~20 s idle, ~40 s at load 5
    .venv/bin/python bench/contrastive.py                            # B = 8..128, ~3 min on 2 busy cores
    .venv/bin/python bench/contrastive.py --batch-sizes 32,64 --hidden 512 --layers 8 --threads 0
    .venv/bin/python bench/contrastive.py --group-by-length 8       # stage 03's length-grouped batches

Gradient checkpointing: stage 03 has no such parameter (only 05 does); ``--grad-ckpt`` measures
what it would save if it had, by also running every batch size with
``activation_checkpointing_enable(use_reentrant=False)`` (transformers 5's name for it).

Threads: 1 by default, as ``lib.world.basemodel``: with other processes on the cores, torch's default of
one thread per core spin-waits at barriers (measured here at load ~5 on 2 cores: steps 4x slower,
a small ``info_nce`` 20x). On an idle many-core machine pass ``--threads 0`` (or a count).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import REPO, Timer, emit, isolated, table

SHARED = REPO.parent / "shared" / "data"
PAIRS = ("parallel/news_dev.ko", "parallel/news_dev.en")


# ----------------------------------------------------------------------------- data (parent)

def shared_tokenizer(kind: str):
    """The Llama-2 tokenizer, merged with KoBERT (``kind="merged"``) or alone (``"llama2"``)."""
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model, merge_sp
    base = load_sp_model(SHARED / "tokenizers/llama2/tokenizer.model")
    if kind == "llama2":
        return hf_tokenizer_from_sp(base)
    merged, _ = merge_sp(base, load_sp_model(SHARED / "tokenizers/kobert/tokenizer.model"), mode="all")
    return hf_tokenizer_from_sp(merged)


def toy_pairs_and_tokenizer(kind: str):
    """Toy-world bridge pairs and the toy tokenizers (base BPE, merged with the Korean unigram)."""
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model, merge_sp
    from lib.world import WorldSpec, build_world, write_world
    from lib.world import basemodel as toymodel
    world = build_world(WorldSpec())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_world(world, tmp)                   # the tokenizer trainers read the world from disk
        base = load_sp_model(toymodel.train_base_tokenizer(tmp, tmp / "base")["path"])
        if kind == "merged":
            korean = load_sp_model(toymodel.train_korean_tokenizer(tmp, tmp / "ko")["path"])
            base, _ = merge_sp(base, korean, mode="all")
        tok = hf_tokenizer_from_sp(base)
    return world.texts["data/bridge_train.ko"], world.texts["data/bridge_train.en"], tok


def load_pairs(kind: str, max_len: int) -> dict:
    """Encoded pairs as numpy arrays (they travel to each child), plus where they came from."""
    from lib.core.readers import read_parallel
    from lib.train.pairs import encode_texts
    if (SHARED / PAIRS[0]).is_file() and (SHARED / "tokenizers/llama2/tokenizer.model").is_file():
        ko, en = read_parallel(SHARED / PAIRS[0], SHARED / PAIRS[1])
        tok, source = shared_tokenizer(kind), f"shared/data/{PAIRS[0][:-3]}.{{ko,en}}"
    else:
        ko, en, tok = toy_pairs_and_tokenizer(kind)
        source, kind = "toy world bridge_train (shared/data not found)", f"toy {kind}"
    enc = {lang: {k: v.numpy() for k, v in encode_texts(tok, texts, max_len).items()}
           for lang, texts in (("ko", ko), ("en", en))}
    lengths = {lang: enc[lang]["attention_mask"].sum(axis=1) for lang in enc}
    return {"enc": enc, "vocab": len(tok), "source": source, "tokenizer": kind, "pairs": len(ko),
            "mean_tokens": {lang: float(v.mean()) for lang, v in lengths.items()},
            "p90_tokens": {lang: float(np.percentile(v, 90)) for lang, v in lengths.items()}}


# ----------------------------------------------------------------------------- one batch size (child)

def model_config(vocab: int, hidden: int, layers: int, max_len: int):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 5504 // 2048,
                       num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                       num_key_value_heads=max(1, hidden // 64), max_position_embeddings=max(max_len, 256),
                       bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)


def stage1(enc: dict, vocab: int, batch_size: int, args: SimpleNamespace):
    """A ``Stage1`` as ``build`` makes it, on a fresh model and already-encoded pairs."""
    import torch
    from transformers import LlamaForCausalLM

    from lib.train.contrastive import Encoder, Stage1, freeze_for_stage1, layer_choice
    from lib.train.pairs import PairBatches, pair_lengths
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(vocab, args.hidden, args.layers, args.max_len)).float()
    if args.grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    cfg = SimpleNamespace(layer=-1, layer_range=[], pooling="mean", temperature=0.05)
    choice, _ = layer_choice(cfg, model.config.num_hidden_layers + 1)
    info = freeze_for_stage1(model, choice["layer"], keep_all=False)
    train_enc = {lang: {k: torch.from_numpy(v) for k, v in d.items()} for lang, d in enc.items()}
    n = len(train_enc["ko"]["input_ids"])
    return Stage1(cfg=cfg, model=model, tok=None, init_from="", encoder=Encoder(model, choice, "mean"),
                  english=model, english_choice={},
                  pairs=PairBatches(n, batch_size, seed=0, group_by_length=args.group_by_length,
                                    lengths=pair_lengths(train_enc)),
                  train_enc=train_enc, heldout=([], []), clm=None, info=info)


def infonce_seconds(batch_size: int, dim: int, repeats: int) -> float:
    """Seconds of ``info_nce`` forward + backward on [B, d] vectors: the loss without the model."""
    import torch

    from lib.modeling.losses import info_nce
    a = torch.randn(batch_size, dim, requires_grad=True)
    b = torch.randn(batch_size, dim, requires_grad=True)
    info_nce(a, b).backward()                                 # warm-up
    with Timer() as t:
        for _ in range(repeats):
            info_nce(a, b).backward()
    return t.seconds / repeats


def run_batch_size(enc: dict, vocab: int, batch_size: int, args: SimpleNamespace) -> dict:
    """Warm-up steps, then timed stage-1 steps at ``batch_size`` pairs (``--steps``, or enough
    for ``--min-pairs``); the time is split into forward (model + loss), backward and optimizer."""
    import torch

    from lib.train.contrastive import batch_fn, loss_fn
    if args.threads:
        torch.set_num_threads(args.threads)
    s = stage1(enc, vocab, batch_size, args)
    batch_at, compute = batch_fn(s), loss_fn(s)
    params = [p for p in s.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)   # the loop's optimizer, a6000's lr
    s.encoder.train()
    steps = max(args.steps, -(-args.min_pairs // batch_size))   # small batches: more steps, less noise
    fwd = bwd = step_opt = cpu = 0.0
    tokens = padded = separate = 0
    for step in range(args.warmup + steps):
        batch = batch_at(step, 0, 0, 1)
        timed = step >= args.warmup
        cpu0 = time.process_time()
        with Timer() as t_f:
            loss, _ = compute([s.encoder], batch)
        with Timer() as t_b:
            loss.backward()
        with Timer() as t_o:
            torch.nn.utils.clip_grad_norm_(params, 1.0)             # the loop's max_grad_norm
            opt.step()
            opt.zero_grad(set_to_none=True)
        if timed:
            fwd, bwd, step_opt = fwd + t_f.seconds, bwd + t_b.seconds, step_opt + t_o.seconds
            cpu += time.process_time() - cpu0
            tokens += sum(int(batch[k]["attention_mask"].sum()) for k in ("ko", "en"))
            # stack_batches pads Korean and English to one width: that is what the forward pass computes
            widths = [batch[k]["input_ids"].shape[1] for k in ("ko", "en")]
            padded += 2 * batch_size * max(widths)
            separate += batch_size * sum(widths)           # had each language its own pass
    total = fwd + bwd + step_opt
    nce = infonce_seconds(batch_size, args.hidden, repeats=max(5, 2000 // batch_size))
    return {"steps": steps, "seconds_per_step": total / steps, "forward_s": fwd / steps,
            "backward_s": bwd / steps, "optimizer_s": step_opt / steps,
            "pairs_per_second": batch_size * steps / total, "tokens_per_second": tokens / total,
            "tokens_per_step": tokens / steps, "padded_tokens_per_step": padded / steps,
            "pad_share": 1 - tokens / padded, "pad_share_separate": 1 - tokens / separate,
            "infonce_ms": nce * 1e3, "infonce_share": nce / (total / steps), "cpu_per_wall": cpu / total,
            "trainable_params": sum(p.numel() for p in params), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", default="8,16,32,64,128", help="pairs per step, comma-separated")
    p.add_argument("--steps", type=int, default=1, help="timed steps per batch size, at least")
    p.add_argument("--min-pairs", type=int, default=64, help="time at least this many pairs per batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence at most (a6000: 128)")
    p.add_argument("--tokenizer", choices=("merged", "llama2"), default="merged",
                   help="merged: Llama-2 + KoBERT (what stage 03 sees); llama2: the base tokenizer alone")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per batch size (0: torch's default, one per core; 1: see the docstring)")
    p.add_argument("--group-by-length", type=int, default=0,
                   help="stage 03's group_by_length: pool this many batches and sort them by length (0: off)")
    p.add_argument("--grad-ckpt", action="store_true",
                   help="also run each batch size with gradient checkpointing")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: B = 8,32, hidden 128, 2 layers, 1 timed step")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.steps, args.min_pairs, args.hidden, args.layers = "8,32", 1, 0, 128, 2
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_pairs(args.tokenizer, args.max_len)
    mean, p90 = data["mean_tokens"], data["p90_tokens"]
    print(f"pairs: {data['pairs']} from {data['source']}, tokenizer {data['tokenizer']} ({data['vocab']:,} "
          f"pieces); tokens per sentence mean ko {mean['ko']:.1f} / en {mean['en']:.1f}, p90 ko {p90['ko']:.0f} "
          f"/ en {p90['en']:.0f} (BOS included, max_len {args.max_len})")
    print(f"model: LlamaForCausalLM fp32 CPU, hidden {args.hidden}, layers {args.layers}, "
          f"heads {max(1, args.hidden // 64)}, intermediate {args.hidden * 5504 // 2048}, vocab {data['vocab']:,}")
    rows = []
    for ckpt in ([False, True] if args.grad_ckpt else [False]):
        for b in args.batch_sizes:
            if b > data["pairs"]:
                raise SystemExit(f"batch size {b} is larger than the {data['pairs']} pairs; lower --batch-sizes")
            child = SimpleNamespace(**{**vars(args), "grad_ckpt": ckpt})
            r, mem = isolated(run_batch_size, data["enc"], data["vocab"], b, child)
            rows.append({"batch": b, "grad_ckpt": ckpt, **r, **mem,
                         "step_mb": round(mem["peak_rss_mb"] - mem["rss_at_start_mb"], 1)})
            print(f"  B={b:4d}{' ckpt' if ckpt else ''}: {r['seconds_per_step']:.2f} s/step, "
                  f"{r['pairs_per_second']:.1f} pairs/s, peak {mem['peak_rss_mb']:.0f} MB", flush=True)
    for r in rows:
        base = next(x for x in rows if x["grad_ckpt"] == r["grad_ckpt"])   # smallest batch, same mode
        r["vs_smallest"] = r["pairs_per_second"] / base["pairs_per_second"]
        r["fwd/bwd/opt"] = "/".join(f"{r[k] / r['seconds_per_step']:.0%}"
                                    for k in ("forward_s", "backward_s", "optimizer_s"))
        r["infonce_pct"] = f"{r['infonce_share']:.3%}"
        r["ckpt"] = "yes" if r["grad_ckpt"] else "no"
    cols = ["batch"] + (["ckpt"] if args.grad_ckpt else []) + [
        "pairs_per_second", "vs_smallest", "seconds_per_step", "fwd/bwd/opt", "tokens_per_second",
        "pad_share", "pad_share_separate", "infonce_ms", "infonce_pct", "peak_rss_mb", "step_mb", "cpu_per_wall"]
    print()
    print(table(rows, cols))
    print(f"\nvs_smallest: pairs/s over B={args.batch_sizes[0]}'s (same run, same checkpointing). infonce: "
          f"info_nce forward+backward on [B, {args.hidden}] vectors alone, and its share of the step. pad_share: "
          "padded positions of the Ko+En forward (separate: had Korean and English each their own pass). "
          "step_mb: peak RSS above the RSS after imports. cpu_per_wall: CPU seconds of the process per second "
          "timed; below the thread count, other processes took the cores (the numbers are pessimistic).")
    shown_only = ("fwd/bwd/opt", "infonce_pct", "ckpt")
    return emit("contrastive", config=vars(args), data={k: v for k, v in data.items() if k != "enc"},
                rows=[{k: v for k, v in r.items() if k not in shown_only} for r in rows])


if __name__ == "__main__":
    main()
