"""What a profile will cost before it runs: peak GPU memory, checkpoint disk, tokens and time per stage.

    python -m lib.pipeline plan params/a6000.yaml                  # the table, for a 48 GB GPU
    python -m lib.pipeline plan params/a6000.yaml --gpu-memory 24 --mfu 0.3
    python -m lib.pipeline plan params/toy.yaml                   # before 00 ran: the toy model from 00's parameters

``run`` calls :func:`check_fits` on a CUDA machine (or with ``--gpu-memory``) and refuses a stage
whose estimate exceeds the device, naming the parameter to turn.

The memory model (bytes; ``P`` parameters, ``T`` trainable, ``N`` tokens of one micro-batch,
``V`` vocab, ``h`` hidden, ``i`` MLP width, ``L`` layers):

- weights ``4P`` (fp32 master weights; pure ``bf16`` 2P; QLoRA ~0.55 B per quantised weight),
  plus under bf16 autocast the bf16 copies of the linear weights autograd keeps (``2P``);
- gradients ``4T`` and AdamW state ``8T`` (half of each with pure bf16);
- activations per token and layer ``10h + 4i`` values (measured with saved-tensor hooks on the
  HF Llama layer; SwiGLU keeps 4 tensors of width ``i``), 4 bytes each in fp32; under bf16
  autocast 2 bytes each, the ``4h`` RMSNorm values in fp32 and the norms' bf16 outputs
  (``32h + 8i`` bytes; derived, not measured: no GPU here);
  with gradient checkpointing one ``h``-vector per layer plus one layer recomputed; a stage whose
  layers get no gradient (04: the head only) keeps just the head's input; ``packing: documents``
  (05) adds sdpa's ``B x T x T`` mask, bool + float bias: ``3 B T^2`` bytes (``5 B T^2`` in fp32);
- logits and loss: ``k N V`` bytes at the start of the backward pass (fp32 logits, log-softmax,
  their gradients); ``k`` = 12 in fp32 (measured), 14 under autocast (+ the bf16 logits). With the
  chunked cross-entropy (``loss_chunk_tokens`` C > 0, :mod:`lib.modeling.chunked_ce`) only one
  chunk's logits live at a time: ``k min(N, C) V``, plus the head's fp32 gradient accumulator and
  its autocast copy (``6 V h`` bytes, ``4 V h`` in fp32);
- peak = weights + optimizer + activations + logits + (gradients when ``grad_accum > 1``, since
  they live through the next micro-batch; else the larger of that and the gradients alone).

On the CPU the fp32 model is checked against the measured peak RSS of real training steps
(``tests/test_plan.py``: within 25%); the bf16 numbers are the same model with other byte counts
and are unmeasured until a GPU runs ``bench/gpu_smoke.py``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from lib.core import paths
from lib.core.params import ParamsError, Profile, load_profile, stage_params, validate_profile
from lib.eval.extratasks import planned_requests
from lib.run.checkvalues import value_problem
# the shapes live in lib.run.shapes; plan's names for them are kept (tests, bench/)
from lib.run.shapes import KNOWN_SHAPES, Shape, ShapeUnknown, base_shape, model_shape, shape_from_config  # noqa: F401
from lib.run.stages import select_stages

GiB = 1024 ** 3

KOBERT_NEW_PIECES = {"all": 7478, "hangul": 7056}   # Llama-2 + KoBERT (../shared/data/README.md)
A6000_BF16_TFLOPS = 154.8          # dense bf16 tensor-core peak of an RTX A6000 (NVIDIA datasheet)
EVAL_TOKENS_PER_REQUEST = 256      # assumed mean length of an lm-eval request (context + choice)


class PlanError(ParamsError):
    """A stage does not fit the device; the message names the stage, the estimate and the knob."""


# ----------------------------------------------------------------------------- memory

@dataclass
class Memory:
    """Peak memory of one training micro-step, by part (bytes)."""
    weights: float
    grads: float
    optimizer: float
    activations: float
    activations_alt: float         # the same with the other gradient_checkpointing setting
    logits: float
    grad_accum: int = 1

    @property
    def peak(self) -> float:
        base = self.weights + self.optimizer
        if self.grad_accum > 1:
            return base + self.grads + self.activations + self.logits
        return base + max(self.activations + self.logits, self.grads)


def train_memory(shape: Shape, tokens: int, *, trainable: int, mixed: bool, pure_bf16: bool = False,
                 layers_saved: bool = True, checkpointing: bool = False, logit_tokens: int | None = None,
                 extra_weights: float = 0.0, quantized: bool = False, grad_accum: int = 1,
                 loss_chunk: int = 0) -> Memory:
    """The :class:`Memory` of a training step on ``tokens`` tokens per micro-batch.

    ``layers_saved``: whether the layers keep activations (False when no parameter in or below
    them trains); ``logit_tokens``: tokens whose full-vocab logits are computed (default ``tokens``);
    ``loss_chunk``: the chunked loss's rows per chunk (0: the full logits).
    """
    h, i, L, V = shape.hidden, shape.intermediate, shape.layers, shape.vocab
    wb = 2 if pure_bf16 else 4
    if quantized:   # nf4 with double quantisation: ~0.55 B per linear weight; the rest bf16
        weights = 0.55 * shape.linear_params + 2 * (shape.params - shape.linear_params)
    else:
        weights = wb * shape.params
    if mixed and not quantized:
        weights += 2 * shape.linear_params          # bf16 copies autograd keeps for the backward
    weights += extra_weights
    grads, optimizer = wb * trainable, 2 * wb * trainable
    act_b = 2 if (mixed or pure_bf16) else 4
    # under autocast the 4h RMSNorm values stay fp32 (+2 bytes each) and both norm outputs are
    # also kept as the bf16 inputs of the next matmuls (2h x 2 bytes): 32h + 8i bytes in all
    per_layer = (10 * h + 4 * i) * act_b + (12 * h if mixed else 0)
    full = L * tokens * per_layer + 3 * h * tokens * act_b
    ckpt = L * tokens * h * (4 if mixed else act_b) + tokens * per_layer + 3 * h * tokens * act_b
    head_only = h * tokens * act_b
    if not layers_saved:
        act, alt = head_only, head_only
    else:
        act, alt = (ckpt, full) if checkpointing else (full, ckpt)
    n_logit = tokens if logit_tokens is None else logit_tokens
    if loss_chunk:
        n_logit = min(n_logit, loss_chunk)
    logits = (14 if (mixed or pure_bf16) else 12) * n_logit * V
    if loss_chunk:
        logits += (6 if mixed else 4) * V * h
    return Memory(weights, grads, optimizer, act, alt, logits, grad_accum)


def infer_memory(shape: Shape, batch: int, seq: int, cuda: bool = True) -> float:
    """Evaluation: weights (bf16 on CUDA) plus one batch's logits in bf16, fp32 and log-softmax."""
    wb = 2 if cuda else 4
    return wb * shape.params + batch * seq * shape.vocab * (10 if cuda else 8) + batch * seq * shape.hidden * 16


# ----------------------------------------------------------------------------- stages

@dataclass
class StagePlan:
    stage: str
    memory: Memory | None = None          # training stages
    peak: float = 0.0                     # bytes
    disk: float = 0.0                     # bytes of checkpoints and model/ folders this stage leaves
    tokens: float = 0.0                   # tokens processed (training: upper bound with padding)
    flops: float = 0.0
    notes: list[str] = field(default_factory=list)
    knob: str = ""                        # what to change when it does not fit

    def seconds(self, tflops: float, mfu: float) -> float:
        return self.flops / (tflops * 1e12 * mfu) if self.flops else 0.0


def _lora_params(shape: Shape, p: dict) -> int:
    h, i, kv = shape.hidden, shape.intermediate, shape.hidden * shape.kv_heads // shape.heads
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    r = p.get("lora_r", 16)
    return shape.layers * sum(r * (a + b) for name, (a, b) in dims.items() if name in p.get("lora_targets", []))


def _n_saves(p: dict) -> int:
    steps, every = p["steps"], p.get("save_every", 0)
    n = (steps // every + (steps % every != 0)) if every else 1
    return n if p.get("keep_checkpoints", True) else 1


def _precision(p: dict, cuda: bool) -> tuple[bool, bool]:
    """(bf16 autocast, pure bf16) for a stage's ``precision`` on a CUDA (or CPU) device."""
    prec = p.get("precision", "auto").replace("auto", "bf16-mixed" if cuda else "fp32")
    return prec == "bf16-mixed", prec == "bf16"


def _train_stage(stage: str, p: dict, shape: Shape, cuda: bool, adapters_only: bool = False) -> StagePlan:
    """``adapters_only``: LoRA trains its adapters alone (DPO), not also the embeddings and head."""
    mixed, pure = _precision(p, cuda)
    accum = p.get("grad_accum", 1)
    P, Vh = shape.params, shape.embed_params
    gc = bool(p.get("gradient_checkpointing", False))
    method = p.get("method", "full")
    notes, extra, layers_saved, logit_tokens, extra_logits, extra_act = [], 0.0, True, None, 0.0, 0.0
    if stage.startswith("03"):
        # Korean and English rows in one pass (English alone through a frozen copy: no activations)
        tokens = (1 if p.get("english_encoder") == "frozen" else 2) * p["batch_size"] * p["max_len"]
        trainable, logit_tokens = P - (0 if shape.tied else Vh), p["batch_size"] * 2
        if p.get("english_encoder") == "frozen":
            extra += (2 if pure else 4) * P
            notes.append("frozen English copy")
        if p.get("clm_weight", 0) > 0:
            tokens += p["batch_size"] * p["clm_block"]
            chunk = p.get("loss_chunk_tokens", 0)
            logit_tokens += min(p["batch_size"] * p["clm_block"], chunk or p["batch_size"] * p["clm_block"])
            if chunk:
                extra_logits = (6 if mixed else 4) * Vh          # the chunked loss's head copy and gradient
        knob = (f"{stage}.max_len or batch_size (fewer in-batch negatives)" if gc else
                f"{stage}.gradient_checkpointing: true, or a lower max_len")
    elif stage.startswith("04"):
        tokens = p["batch_size"] * p["block_size"]
        trainable = Vh
        if p.get("train_new_embeddings"):
            trainable += Vh
        else:
            layers_saved = False
        knob = f"{stage}.batch_size (raise grad_accum to keep the tokens per step)"
    else:                                                       # 05 and 06
        tokens = p["batch_size"] * (p["block_size"] if stage.startswith("05") else p["max_len"])
        if method == "full":
            trainable = P
        elif adapters_only:
            trainable = _lora_params(shape, p)
            notes.append(f"{method} r={p.get('lora_r')}")
        else:
            trainable = _lora_params(shape, p) + 2 * Vh         # modules_to_save: embeddings and head
            extra += (2 if pure else 4) * 2 * Vh                # their trainable copies
            notes.append(f"{method} r={p.get('lora_r')}")
        knob = (f"{stage}.batch_size (raise grad_accum to keep the tokens per step)" if gc else
                f"{stage}.gradient_checkpointing: true, or a lower batch_size")
        if method == "full":
            knob += "; or method: lora"
        if p.get("packing") == "documents":      # sdpa's [B, 1, T, T] mask: bool, and its float bias
            extra_act = p["batch_size"] * p["block_size"] ** 2 * (3 if mixed else 5)
            notes.append("packing: documents (block-diagonal mask)")
    mem = train_memory(shape, tokens, trainable=trainable, mixed=mixed, pure_bf16=pure, layers_saved=layers_saved,
                       checkpointing=gc, logit_tokens=logit_tokens, extra_weights=extra,
                       quantized=method == "qlora", grad_accum=accum,
                       loss_chunk=0 if stage.startswith("03") else p.get("loss_chunk_tokens", 0))
    mem.logits += extra_logits
    mem.activations, mem.activations_alt = mem.activations + extra_act, mem.activations_alt + extra_act
    steps_tokens = p["steps"] * accum * tokens
    if layers_saved and trainable >= P - Vh:
        per_token = 6 * P + (2 * P if gc else 0)
    elif layers_saved:                         # frozen base: forward + input gradients, + trainable weights
        per_token = 4 * P + 2 * trainable + (2 * P if gc else 0)
    else:
        per_token = 2 * P + 2 * Vh
    per_token += 12 * shape.layers * shape.hidden * min(tokens // max(p["batch_size"], 1), 4096) / 2
    wbytes = 2 if pure else 4
    model_dir = wbytes * P
    state = 4 * P + 3 * wbytes * trainable                     # the latest checkpoint's state/
    disk = _n_saves(p) * model_dir + state + model_dir         # + the stage's model/ copy
    disk += _n_saves(p) * 4 * trainable if method != "full" else 0     # adapter/ folders
    return StagePlan(stage, mem, mem.peak, disk, steps_tokens, per_token * steps_tokens, notes, knob)


def _dpo_stage(stage: str, p: dict, shape: Shape, cuda: bool) -> StagePlan:
    """06's DPO after SFT (``dpo: true``, :mod:`lib.train.dpo`): each micro-batch holds the chosen
    and the rejected sequence of ``dpo_batch_size`` pairs at 06's ``max_len``; the reference
    log-probabilities are computed once, before training (one forward pass over the pairs, counted
    here as over every token trained on: an upper bound past one epoch). A LoRA policy trains its
    adapters only; a full one every weight, with the reference kept as precomputed numbers."""
    q = {**p, "method": p["dpo_method"], "batch_size": 2 * p["dpo_batch_size"], "grad_accum": p["dpo_grad_accum"],
         "steps": p["dpo_steps"], "save_every": p.get("dpo_save_every", 0)}
    sp = _train_stage(stage, q, shape, cuda, adapters_only=True)
    sp.stage = f"{stage} (dpo)"
    sp.flops += 2 * shape.params * sp.tokens                   # the reference pass
    sp.notes = [f"dpo {n}" for n in sp.notes] + [f"dpo: {p['dpo_steps']} steps x {p['dpo_batch_size']} x "
                                                 f"{p['dpo_grad_accum']} pairs (chosen + rejected)"]
    sp.knob = re.sub(r"\b(batch_size|grad_accum|method)\b", r"dpo_\1", sp.knob)   # DPO's own knobs
    return sp


def _eval_requests(p: dict, cfg_path) -> int:
    """Requests of the 07 tasks: items x choices x 2 languages, counted from local files
    (a Hub task counts as its file would: ~4 choices, items unknown -> 900)."""
    n = 0
    for task in p["tasks"].values():
        for side in ("en", "ko"):
            src = str(task[side])
            f = cfg_path(src) if not src.startswith("hub:") else None
            items = sum(1 for ln in f.open(encoding="utf-8") if ln.strip()) if f is not None and f.exists() else 900
            n += 4 * (min(items, p["limit"]) if p.get("limit") else items)
    return n


def plan_profile(prof: Profile, stages: list[str], run: str, cuda: bool = True) -> list[StagePlan]:
    """A :class:`StagePlan` per stage of ``stages`` (training stages in detail, the others roughly)."""
    common = stage_params(prof, stages[0], run)
    rd = paths.run_dir(run)
    shape, korean, known = base_shape(common["base_model"], prof, run)
    merged = rd / "01_vocab_merge" / "metrics.json"
    if merged.exists():
        vocab, how = json.loads(merged.read_text(encoding="utf-8"))["merged_vocab_size"], "01's metrics"
    elif korean is not None:            # the toy model: at most every piece of 00's Korean tokenizer
        vocab, how = shape.vocab + korean, f"{shape.vocab:,} + at most {korean:,} Korean pieces; base from {known}"
    else:
        mode = stage_params(prof, "01_vocab_merge", run).get("merge_mode", "all")
        vocab, how = shape.vocab + KOBERT_NEW_PIECES.get(mode, 7478), f"{shape.vocab:,} + KoBERT ({mode})"
    merged_shape = shape.with_vocab(vocab)
    out = []
    for stage in stages:
        p = stage_params(prof, stage, run)
        if stage[:2] in ("03", "04", "05", "06"):
            sp = _train_stage(stage, p, merged_shape, cuda)
            if stage[:2] == "06" and p.get("dpo"):
                out.append(sp)
                sp = _dpo_stage(stage, p, merged_shape, cuda)
        elif stage.startswith("01"):
            sp = StagePlan(stage, notes=[f"tokenizer only; merged vocab {vocab:,} ({how})"])
        elif stage.startswith("02"):
            # 02 loads and saves in the inference dtype (bf16 on CUDA)
            sp = StagePlan(stage, peak=infer_memory(merged_shape, 8, p["max_len"], cuda),
                           disk=(2 if cuda else 4) * merged_shape.params)
        elif stage.startswith("07"):
            n_models = len(p["baselines"]) + _models_of_run(prof, stages, run)
            req = _eval_requests(p, lambda s: paths.resolve_path(s, rd))
            extra, extra_notes = planned_requests(p.get("extra_tasks", {}), p.get("limit", 0),
                                                  lambda s: paths.resolve_path(s, rd))
            n_extra = len(p["baselines"]) + _models_of_run(prof, stages, run, p.get("extra_checkpoints", True))
            tok = (req * n_models + extra * n_extra) * EVAL_TOKENS_PER_REQUEST
            sp = StagePlan(stage, peak=infer_memory(merged_shape, p["batch_size"], 1024, cuda), tokens=tok,
                           flops=2 * merged_shape.params * tok,
                           notes=[f"{n_models} models x {req:,} requests (~{EVAL_TOKENS_PER_REQUEST} tokens each)",
                                  *[f"{n} ({n_extra} models)" for n in extra_notes[:1]], *extra_notes[1:]],
                           knob=f"{stage}.batch_size")
        elif stage.startswith("08"):
            sp = StagePlan(stage, peak=infer_memory(merged_shape, p["batch_size"], p["max_len"], cuda))
        else:
            sp = StagePlan(stage)
        out.append(sp)
    return out


def _models_of_run(prof: Profile, stages: list[str], run: str, checkpoints: bool = True) -> int:
    """Models 07 scores besides the baselines: every stage's model/ and (``checkpoints`` and
    07's ``include_checkpoints``) its kept checkpoints."""
    n = 0
    for stage in stages:
        if stage[:2] == "02":
            n += 1
        elif stage[:2] in ("03", "04", "05", "06"):
            p = stage_params(prof, stage, run)
            with_ckpts = checkpoints and stage_params(prof, "07_benchmark_eval", run).get("include_checkpoints")
            n += 1 + (_n_saves(p) - 1 if with_ckpts else 0)
    return n


# ----------------------------------------------------------------------------- output

def _gb(x: float) -> str:
    return f"{x / GiB:.1f}" if x else "-"


def _hours(s: float) -> str:
    return "-" if not s else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")


def table(plans: list[StagePlan], gpu_gib: float, tflops: float, mfu: float) -> str:
    """The plan as a Markdown table, with totals and the tightest stage."""
    rows = ["| stage | peak GiB | weights | grads | optim | activ. (other GC) | logits | fits | disk GiB | tokens | time |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for sp in plans:
        m = sp.memory
        parts = ([_gb(m.weights), _gb(m.grads), _gb(m.optimizer), f"{_gb(m.activations)} ({_gb(m.activations_alt)})",
                  _gb(m.logits)] if m else ["-"] * 5)
        fits = "-" if not sp.peak else ("yes" if sp.peak <= gpu_gib * GiB else "**NO**")
        rows.append(f"| {sp.stage} | {_gb(sp.peak)} | " + " | ".join(parts) +
                    f" | {fits} | {_gb(sp.disk)} | {sp.tokens / 1e6:.1f}M | {_hours(sp.seconds(tflops, mfu))} |"
                    if sp.tokens else
                    f"| {sp.stage} | {_gb(sp.peak)} | " + " | ".join(parts) + f" | {fits} | {_gb(sp.disk)} | - | - |")
    tight = max((sp for sp in plans if sp.peak), key=lambda sp: sp.peak, default=None)
    total_time = sum(sp.seconds(tflops, mfu) for sp in plans)
    foot = [f"device {gpu_gib:g} GiB; time at {tflops:g} TFLOP/s x MFU {mfu:g} (assumed, not measured); "
            f"disk total {_gb(sum(sp.disk for sp in plans))} GiB; time total {_hours(total_time)}"]
    if tight:
        foot.append(f"tightest stage: {tight.stage} ({_gb(tight.peak)} GiB of {gpu_gib:g}); knob: {tight.knob}")
    for sp in plans:
        if sp.notes:
            foot.append(f"{sp.stage}: {'; '.join(sp.notes)}")
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {f}" for f in foot)


def check_fits(prof: Profile, stages: list[str], run: str, gpu_gib: float, cuda: bool = True) -> None:
    """Raise :class:`PlanError` for the first stage whose estimated peak exceeds ``gpu_gib``.
    A base model whose shape cannot be known yet (the toy model before 00 ran, a Hub id that is
    neither known here nor cached) is not checked: a note says so and the run goes on."""
    if not stages:
        return
    try:
        plans = plan_profile(prof, stages, run, cuda)
    except ShapeUnknown as e:
        print(f"note: no memory check ({e})")
        return
    for sp in plans:
        if sp.peak > gpu_gib * GiB:
            raise PlanError(f"{prof.path}: {sp.stage} needs about {sp.peak / GiB:.1f} GiB of GPU memory "
                            f"(estimate: python -m lib.pipeline plan {prof.path}) but the device has "
                            f"{gpu_gib:g} GiB. Nothing was run. Turn {sp.knob}.")


def device_gib() -> float | None:
    """Memory of this process's GPU in GiB, or None without CUDA."""
    import torch  # lib.run keeps torch off its own top imports; only for the GPU's memory
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GiB


def plan_problems(prof: Profile, stages: list[str], gpu_gib: float, tflops: float, mfu: float) -> list[str]:
    """The device figures must be positive (``mfu`` a share) and the profile's values pass check's
    value rules (lib.run.checkvalues; ``device`` aside: a plan is often made away from the GPU)."""
    problems = [f"--{flag} must be a positive number, got {v}" for flag, v in
                (("gpu-memory", gpu_gib), ("tflops", tflops), ("mfu", mfu)) if not (math.isfinite(v) and v > 0)]
    if math.isfinite(mfu) and mfu > 1:
        problems.append(f"--mfu is a share of the device's peak (e.g. 0.35), at most 1, got {mfu}")
    for stage in stages:
        section = prof.sections.get(stage, {})
        for key, value in stage_params(prof, stage, prof.name, problems=[]).items():
            where = (f"{prof.where(stage, key)}: {stage}.{key}" if key in section else
                     f"{prof.where('common', key)}: common.{key}" if key in prof.common() else None)
            msg = where and key != "device" and value_problem(key, value)
            if msg:
                problems.append(f"{where}: {msg}")
    return list(dict.fromkeys(problems))


def print_plan(params_file: str, gpu_gib: float = 48.0, tflops: float = A6000_BF16_TFLOPS, mfu: float = 0.35,
               run: str | None = None) -> str:
    prof = load_profile(params_file)
    stages = select_stages(prof)
    validate_profile(prof, stages)
    problems = plan_problems(prof, stages, gpu_gib, tflops, mfu)
    if problems:
        raise ParamsError.of(problems)
    text = table(plan_profile(prof, stages, run or prof.name, cuda=True), gpu_gib, tflops, mfu)
    print(text)
    return text
