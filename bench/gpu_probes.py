"""Precision probes of the CUDA path (``../shared/docs/GPU_AUDIT.md`` F1, F2, F3, F7, F12): what
the code in ``lib/`` does under the training precision, measured on small random models, one JSON
line per probe. Part b (and e) of ``bench/gpu_check.sh``.

    python bench/gpu_probes.py                                  # on a GPU: every probe (time unmeasured)
    python bench/gpu_probes.py --device cpu                     # the same code on a CPU (seconds)
    python bench/gpu_probes.py --device cpu --precision bf16-mixed --only f2   # CPU bf16 autocast
    python bench/gpu_probes.py --only f1,f3 --out probes.jsonl --strict
    accelerate launch --config_file params/accelerate/fsdp.yaml --num_processes 1 \\
        bench/gpu_probes.py --only f7                           # F7 under FSDP's bf16 policy

Probes (each line has ``probe``, ``ok`` and the figures; ``ok`` says whether lib's code path
gives the right numbers, not whether the hardware is fast):

- ``f1``: ``lib.modeling.losses.info_nce`` and ``lib.train.align_terms.masked_info_nce`` inside
  ``torch.autocast(<device>, bfloat16)`` (where the loop calls them): the dtype of the similarity
  matmul (recorded as it runs), the loss dtype, |loss - fp32 loss| and the gradient's relative
  error against fp32, on pairs with cosine ~0.9 (logits 16-20 at t=0.05, where bf16 steps 0.125).
  ok: similarity fp32 and |loss error| < 1e-4.
- ``f2``: DPO at step 0 (``lib.train.dpo.pair_logps``, ``pair_summary``) on a tiny random Llama:
  the reference scored before ``Accelerator.prepare`` (plain, as ee17a42's ``train_dpo``; and under
  ``lib.modeling.model.compute_context``, the training precision) against the policy scored after it, as
  06's step-0 evaluation does (accelerate's forward wrapper taken off, under the loop's autocast: the
  chunked loss computes the head outside ``forward``, so it must sit inside the same autocast). Same weights, so reward accuracy and margin must be 0. ok: they are,
  with the reference in the training precision. (The stage itself: part c reads 06's metrics.)
- ``f3``: ``lib.train.sft.add_chat_vector`` with a delta of 1e-3 and 1e-2 of the weights' scale,
  on this device: the share of the delta the saved model keeps, and the saved dtype; next to it
  ``lib.modeling.model.load_model`` (the inference dtype) + ``apply_chat_vector``. ok: add_chat_vector keeps > 99%.
- ``f7``: RoPE ``inv_freq`` dtype and error after a forward under bf16 autocast, after
  ``Accelerator.prepare`` (FSDP's policy when launched with fsdp.yaml) and in the inference dtype;
  the rotary angle error at position 2047. ok: fp32 after autocast and prepare.
- ``kvscore`` (F12, needs lm-eval): ``lib.eval.kvscore.ContextOnceHFLM`` against lm-eval's ``HFLM`` on
  the same model object and token requests, fp32 and the inference dtype: max |log-likelihood
  difference|, share of equal is_greedy and of equal item argmax. ok: fp32 within 1e-3.

The last line is ``{"bench": "gpu_probes", "device", "ok": {probe: bool}, "errors": {...}}``.
With ``--strict`` the exit code is 1 when a probe failed or raised; a raising probe never stops
the others.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

PROBES = ("f1", "f2", "f3", "f7", "kvscore")
F1_TOL = 1e-4                 # |loss - fp32 loss| of InfoNCE under autocast once F1 is fixed
KV_FP32_TOL = 1e-3            # ContextOnceHFLM vs HFLM in fp32 (1e-5 on CPU in tests/test_kvscore.py)


# ----------------------------------------------------------------------------- helpers

def dtype_name(d) -> str:
    return str(d).replace("torch.", "")


def tiny_llama(device, hidden: int, layers: int, vocab: int, seed: int = 0):
    """A seeded random fp32 Llama on ``device`` (eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 2),
                      num_key_value_heads=max(hidden // 64, 2), max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(device).eval()


def calibrate(model, vocab: int) -> None:
    """Scale the LM head so logits spread like a trained model's (std ~3), not a random init's
    (~0.02), which would hide every rounding effect in near-uniform probabilities."""
    import torch
    dev = next(model.parameters()).device
    with torch.no_grad():
        ids = torch.randint(3, vocab, (2, 64), generator=torch.Generator().manual_seed(1)).to(dev)
        s = model(input_ids=ids).logits.float().std().item()
        model.get_output_embeddings().weight.mul_(3.0 / s)


def word_tokenizer(vocab: int):
    """A tokenizer object for a model folder / lm-eval: word-level, ids 0-2 special (probes
    feed token ids directly; only loading needs it)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    t = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>")


def compute_context(mp: str, dev):
    """lib.modeling.model.compute_context when lib has it (the lead's F2 fix), else the same by hand."""
    import torch
    try:
        from lib.modeling.model import compute_context as cc
        return cc(mp, dev), "lib.modeling.model.compute_context"
    except ImportError:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        ctx = torch.autocast(device_type=dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
        return ctx, "torch.autocast (lib.modeling.model has no compute_context)"


def accelerator(mp: str, device: str, out: Path):
    from lib.train.loop import TrainSpec, make_accelerator
    return make_accelerator(TrainSpec(steps=1, report_to="none", mixed_precision=mp,
                                      device=device if device in ("cpu", "cuda") else "auto"), out)


def matmul_dtypes():
    """A TorchFunctionMode that records the output dtype of every matmul called inside it (as
    autocast dispatches it), so a probe sees what lib's own code computed in."""
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        NAMES = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__", "einsum", "linear"}

        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in self.NAMES and hasattr(out, "dtype"):
                self.seen.append(dtype_name(out.dtype))
            return out
    return Recorder()


# ----------------------------------------------------------------------------- F1

def probe_f1(dev, args) -> list[dict]:
    import torch

    from lib.modeling.losses import info_nce
    from lib.train.align_terms import masked_info_nce
    g = torch.Generator().manual_seed(0)
    B, D = 64, 2048
    common = torch.randn(1, D, generator=g) * 0.75 ** 0.5
    own = torch.randn(B, D, generator=g) * 0.15 ** 0.5
    a0 = (common + own + torch.randn(B, D, generator=g) * 0.1 ** 0.5).to(dev)     # pair cos ~0.9
    b0 = (common + own + torch.randn(B, D, generator=g) * 0.1 ** 0.5).to(dev)     # non-pairs ~0.75
    ids = torch.arange(B, device=dev) % (B - 4)              # 4 words twice: masked_info_nce's same-id rows
    fns = {"lib.modeling.losses.info_nce": lambda a, b: info_nce(a, b, temperature=0.05),
           "lib.train.align_terms.masked_info_nce": lambda a, b: masked_info_nce(a, b, ids, 0.05)}
    rows = []
    for name, fn in fns.items():
        res = {}
        for mode in ("fp32", "autocast"):
            a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
            ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
            rec = matmul_dtypes()
            with ctx, rec:
                loss = fn(a, b)
            loss.backward()
            res[mode] = (loss.detach().double().item(), a.grad.double(), rec.seen, dtype_name(loss.dtype))
        (l32, g32, _, _), (l16, g16, seen, ldt) = res["fp32"], res["autocast"]
        err = abs(l16 - l32)
        sim = seen[0] if seen else "none recorded"
        rows.append({"probe": "f1", "fn": name, "autocast": "bfloat16", "similarity_dtype": sim,
                     "loss_dtype": ldt, "loss_fp32": l32, "loss_autocast": l16, "loss_abs_err": err,
                     "grad_rel_err": ((g16 - g32).norm() / g32.norm()).item(),
                     "ok": sim == "float32" and err < F1_TOL})
    return rows


# ----------------------------------------------------------------------------- F2

def probe_f2(dev, args) -> list[dict]:
    import torch

    from lib.data.instructions import Example
    from lib.modeling.model import precision_settings
    from lib.train.dpo import pair_logps, pair_summary
    from lib.train.loop import plain_forward
    large = args.size == "large"
    hidden, layers, vocab = (1024, 8, 32000) if large else (128, 2, 1000)
    prompt, answer, n = (256, 256, 16) if large else (24, 24, 8)
    model = tiny_llama(dev, hidden, layers, vocab)
    calibrate(model, vocab)
    _, mp = precision_settings(args.precision, dev)
    g = torch.Generator().manual_seed(2)

    def example():
        ids = torch.randint(3, vocab, (prompt + answer,), generator=g).tolist()
        return Example(ids=ids, mask=[0] * prompt + [1] * answer, lang="ko")
    pairs = [(example(), example()) for _ in range(n)]
    kinds = ["probe"] * n
    ref_plain = pair_logps(model, pairs, 0, 8, reference=True)             # ee17a42's train_dpo
    ctx, ctx_source = compute_context(mp, dev)
    with ctx:
        ref_ctx = pair_logps(model, pairs, 0, 8, reference=True)           # in the training precision
    with tempfile.TemporaryDirectory() as d:
        acc = accelerator(mp, args.device, Path(d))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        _prepared, opt = acc.prepare(model, opt)
        patched = hasattr(model, "_original_forward")
        plain_forward(model)                               # as lib.train.loop does after prepare
        with acc.autocast():                               # 06's eval_fn at step 0, inside the loop
            policy = pair_logps(model, pairs, 0, 8)
        acc.end_training()

    def summary(ref):
        s = pair_summary(policy, ref, 0.1, kinds)
        return {"reward_accuracy": s["reward_accuracy"], "margin": s["margin"],
                "max_abs_logp_diff": (policy - ref).abs().max().item()}
    fixed = summary(ref_ctx)
    return [{"probe": "f2", "mixed_precision": mp, "forward_patched_by_prepare": patched,
             "model": f"llama {hidden}x{layers}, vocab {vocab}", "pairs": n, "answer_tokens": answer, "beta": 0.1,
             "reference_plain": summary(ref_plain), "reference_in_training_precision": fixed,
             "training_precision_context": ctx_source,
             "ok": fixed["reward_accuracy"] == 0.0 and abs(fixed["margin"]) < 1e-6}]


# ----------------------------------------------------------------------------- F3

class _Cfg(dict):
    """The few stage parameters add_chat_vector reads, as a stage's Config offers them."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def source(self, spec):
        return spec


def _kept(applied, delta) -> tuple[float, float]:
    num = sum((a.double() * d.double()).sum().item() for a, d in zip(applied, delta))
    den = sum((d.double() ** 2).sum().item() for d in delta)
    err = math.sqrt(sum(((a.double() - d.double()) ** 2).sum().item() for a, d in zip(applied, delta)) / den)
    return num / den, err


def probe_f3(dev, args) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    from lib.modeling.model import load_model
    from lib.train.chatvector import apply_chat_vector, load_chat_vector
    from lib.train.sft import add_chat_vector
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = tiny_llama("cpu", 128, 2, 1000)
        tok = word_tokenizer(1000)
        base.save_pretrained(tmp / "base")
        tok.save_pretrained(tmp / "base")
        base_sd = {k: v.clone() for k, v in base.state_dict().items()}
        for rel in (1e-3, 1e-2):
            g = torch.Generator().manual_seed(3)
            delta = {k: torch.randn(v.shape, generator=g) * v.abs().mean() * rel for k, v in base_sd.items()
                     if v.is_floating_point()}
            inst = tiny_llama("cpu", 128, 2, 1000)
            inst.load_state_dict({k: base_sd[k] + delta.get(k, 0) for k in base_sd})
            inst.save_pretrained(tmp / "instruct")
            tok.save_pretrained(tmp / "instruct")
            cfg = _Cfg(device=args.device, precision=args.precision, chat_vector_base=str(tmp / "base"),
                       chat_vector_instruct=str(tmp / "instruct"), chat_vector_weight=1.0, chat_vector_rows="overlap")
            dst = tmp / f"merged_{rel:g}"
            add_chat_vector(cfg, tmp / "base", dst)
            saved = load_file(str(dst / "model.safetensors"))
            names = [k for k in delta if k in saved]
            kept, err = _kept([saved[k].float() - base_sd[k] for k in names], [delta[k] for k in names])
            # the inference dtype path, for contrast (what ee17a42's add_chat_vector did)
            model, _ = load_model(str(tmp / "base"), args.device)
            wdt = dtype_name(next(model.parameters()).dtype)
            before = {k: v.float().cpu().clone() for k, v in model.state_dict().items()}
            apply_chat_vector(model, load_chat_vector(str(tmp / "base"), str(tmp / "instruct")), 1.0)
            after = model.state_dict()
            inf_kept, inf_err = _kept([after[k].float().cpu() - before[k] for k in names], [delta[k] for k in names])
            rows.append({"probe": "f3", "delta_rel": rel,
                         "add_chat_vector": {"saved_dtype": dtype_name(saved[names[0]].dtype), "share_kept": kept,
                                             "rel_err": err},
                         "inference_dtype_load_model": {"dtype": wdt, "share_kept": inf_kept, "rel_err": inf_err},
                         "ok": kept > 0.99})
    return rows


# ----------------------------------------------------------------------------- F7

def _inv_freq_stats(model, inv32) -> dict:
    for name, b in model.named_buffers():
        if name.endswith("inv_freq"):
            diff = (b.detach().double().cpu() - inv32.double()).abs()
            return {"buffer": name, "dtype": dtype_name(b.dtype),
                    "max_rel_err": (diff / inv32.double()).max().item(),
                    "angle_err_at_2047_rad": 2047 * diff.max().item()}
    return {"buffer": None, "dtype": "no inv_freq buffer found"}


def probe_f7(dev, args) -> list[dict]:
    import torch

    from lib.modeling.model import auto_dtype, precision_settings
    vocab = 1000
    ids = torch.randint(3, vocab, (1, 64), generator=torch.Generator().manual_seed(4))
    out = {"probe": "f7"}
    model = tiny_llama(dev, 128, 2, vocab)
    inv32 = model.model.rotary_emb.inv_freq.detach().float().cpu().clone()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        model(input_ids=ids.to(dev))
    out["autocast_forward"] = _inv_freq_stats(model, inv32)
    _, mp = precision_settings(args.precision, dev)
    model = tiny_llama(dev, 128, 2, vocab)
    with tempfile.TemporaryDirectory() as d:
        acc = accelerator(mp, args.device, Path(d))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        prepared, opt = acc.prepare(model, opt)
        with torch.no_grad():
            prepared(input_ids=ids.to(acc.device))            # FSDP casts buffers at its lazy init
        out["prepared"] = {"distributed_type": str(acc.distributed_type), "mixed_precision": acc.mixed_precision,
                           **_inv_freq_stats(prepared, inv32)}
        acc.end_training()
    model = tiny_llama("cpu", 128, 2, vocab).to(dev, auto_dtype(dev))   # as load_model loads for inference
    out["inference_dtype"] = _inv_freq_stats(model, inv32)
    out["ok"] = out["autocast_forward"]["dtype"] == "float32" and out["prepared"]["dtype"] == "float32"
    return [out]


# ----------------------------------------------------------------------------- kvscore (F12)

def probe_kvscore(dev, args) -> list[dict]:
    import random

    import torch
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        return [{"probe": "kvscore", "skipped": f"lm-eval not importable ({e})", "ok": True}]
    from lib.eval.kvscore import ContextOnceHFLM
    from lib.modeling.model import auto_dtype
    large = args.size == "large"
    hidden, layers, vocab = (512, 4, 32000) if large else (64, 2, 500)
    n_items, max_ctx = (48, 700) if large else (10, 60)
    rng = random.Random(0)
    items = []
    for _ in range(n_items):
        ctx = [1] + [rng.randrange(3, vocab) for _ in range(rng.randrange(10, max_ctx))]
        items.append((ctx, [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, 8))] for _ in range(4)]))
    reqs = [(None, c, o) for c, opts in items for o in opts]
    tok = word_tokenizer(vocab)
    rows = []
    base = tiny_llama(dev, hidden, layers, vocab)
    calibrate(base, vocab)
    for dt in (torch.float32, auto_dtype(dev)):
        if rows and dt == torch.float32:
            break                                     # CPU: the inference dtype is fp32 too
        model = base.to(dt)
        kw = dict(pretrained=model, tokenizer=tok, device=str(dev), batch_size=16, softmax_dtype="float32")
        res, secs = {}, {}
        for name, cls in (("hflm", HFLM), ("contextonce", ContextOnceHFLM)):
            lm = cls(**kw)
            t = time.perf_counter()
            res[name] = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs[name] = time.perf_counter() - t
        a, b = res["contextonce"], res["hflm"]
        diff = [abs(x[0] - y[0]) for x, y in zip(a, b)]
        pick = lambda s, i: max(range(4), key=lambda k: s[4 * i + k][0])  # noqa: E731
        row = {"probe": "kvscore", "dtype": dtype_name(dt), "model": f"llama {hidden}x{layers}, vocab {vocab}",
               "requests": len(reqs), "max_abs_ll": max(diff), "mean_abs_ll": sum(diff) / len(diff),
               "greedy_agree": sum(x[1] == y[1] for x, y in zip(a, b)) / len(a),
               "item_argmax_agree": sum(pick(a, i) == pick(b, i) for i in range(n_items)) / n_items,
               "seconds": {k: round(v, 3) for k, v in secs.items()}}
        row["ok"] = max(diff) < KV_FP32_TOL if dt == torch.float32 else True    # bf16: reported, not judged
        rows.append(row)
    return rows


RUNNERS = {"f1": probe_f1, "f2": probe_f2, "f3": probe_f3, "f7": probe_f7, "kvscore": probe_kvscore}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    ap.add_argument("--precision", default="auto",
                    help="the training precision F2/F7 use (lib.modeling.model.precision_settings): auto | bf16-mixed | fp32")
    ap.add_argument("--only", help=f"comma-separated probes among {', '.join(PROBES)} (default: all)")
    ap.add_argument("--size", choices=("small", "large"), help="model sizes (default: large on CUDA, small on CPU)")
    ap.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a probe is not ok or raised")
    args = ap.parse_args(argv)
    only = [p.strip() for p in (args.only or ",".join(PROBES)).split(",") if p.strip()]
    if not only or any(p not in PROBES for p in only):
        ap.error(f"--only: choose among {', '.join(PROBES)}, got {args.only!r}")
    from lib.modeling.model import auto_device
    dev = auto_device(args.device)
    args.size = args.size or ("large" if dev.type == "cuda" else "small")
    oks, errors = {}, {}

    def emit(row: dict) -> None:
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
    for name in only:
        t = time.perf_counter()
        try:
            rows = RUNNERS[name](dev, args)
        except Exception as e:  # noqa: BLE001 - reported, and the other probes still run
            errors[name] = f"{type(e).__name__}: {e}"
            emit({"probe": name, "error": errors[name], "traceback": traceback.format_exc()[-2000:], "ok": False})
            oks[name] = False
            continue
        for r in rows:
            emit({**r, "seconds_probe": round(time.perf_counter() - t, 2)})
        oks[name] = all(r["ok"] for r in rows)
    import torch
    emit({"bench": "gpu_probes", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
          "precision": args.precision, "size": args.size, "ok": oks, "errors": errors})
    return 1 if args.strict and not all(oks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
