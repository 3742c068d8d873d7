"""One resumable training loop on ``accelerate``, shared by stages 03, 04 and 05 (and 06).

The stage supplies three small functions and the loop does the rest:

    result = train(modules, batch_at, loss_fn, spec, out_dir,
                   eval_fn=..., save_fn=...)

- ``batch_at(step, micro, rank, world) -> batch``: the micro-batch of optimizer step ``step``
  for this process. Data position is a pure function of the step, so resuming at step k needs
  no data-loader state and cannot drift.
- ``loss_fn(modules, batch) -> (loss, logs)``: the scalar to minimise and floats to log;
  ``modules`` are the *prepared* modules (DDP-wrapped when distributed): call those, not the
  originals, or gradients are not synchronised.
- ``save_fn(folder)``: writes a ``from_pretrained`` folder of the model (for 07/08 to evaluate).

Checkpoints go to ``out_dir/checkpoints/step-NNNNNN/`` with ``state/`` (accelerate: model,
optimizer, scheduler, RNG), ``model/`` (``save_fn``) and ``trainer_state.json`` (step, history).
Only the latest checkpoint keeps ``state/``: when a new one is written, the older kept ones are cut
down to ``model/`` + ``trainer_state.json`` (a full-training ``state/`` is 16 bytes a parameter in
fp32 with AdamW, ``model/`` 4), and resume reads the latest ``state/`` only.
Calling ``train`` again on the same ``out_dir`` continues from the last checkpoint; on CPU in
fp32 the final weights equal an uninterrupted run's (tested). Precision is ``spec.mixed_precision``
(accelerate's): with ``auto``, bf16 autocast on CUDA over the fp32 weights the stage loaded
(:func:`lib.modeling.model.precision_settings`), plain fp32 on CPU.

Autocast is on exactly where the loop puts it: around ``loss_fn`` and around ``eval_fn`` (so the
step-0 evaluation and every later one measure in the training precision). ``accelerate.prepare``
also wraps each model's ``forward`` in autocast *on the object itself*, which would make every
forward after training started bf16 and every one before it fp32 (a DPO reference computed before
``train`` would then differ from the policy at step 0); the loop takes that wrapper off again
(:func:`plain_forward`), and stages compute their before/after metrics and references in
:func:`lib.modeling.model.compute_context` of the same ``mixed_precision``.

Distributed: DDP (``params/accelerate/ddp.yaml``) is the supported launch. FSDP is accepted only
for full training without autocast (``--mixed_precision no``): under accelerate's FSDP bf16 policy
RoPE's ``inv_freq`` buffer is cast to bf16 and gradients are reduced in bf16, and clipping a
subset of parameters clips each shard by its own norm. DeepSpeed is refused (it saves bf16 model
folders and replaces ``max_grad_norm`` with its own clipping).
"""
from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from lib.core.io import write_json


@dataclass
class TrainSpec:
    steps: int                      # optimizer steps
    lr: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "cosine"        # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1       # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_accum: int = 1             # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    save_every: int = 0             # 0: only the final checkpoint
    eval_every: int = 0             # 0: evaluate only at the start and the end
    keep_checkpoints: bool = True   # keep every checkpoint (07/08 evaluate each) or only the last
    mixed_precision: str = "auto"   # accelerate's: auto (bf16 on CUDA, no on CPU) | bf16 | fp16 | no
    device: str = "auto"            # auto | cpu (forces the CPU on a GPU machine) | cuda
    report_to: str = "tensorboard"  # tensorboard | wandb | none
    log_every: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError(f"steps and grad_accum must be >= 1, got {self.steps}, {self.grad_accum}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.report_to not in ("tensorboard", "wandb", "none"):
            raise ValueError(f"report_to must be tensorboard, wandb or none, got {self.report_to!r}")


class Interrupted(RuntimeError):
    """Raised by ``stop_at`` to simulate a killed run (tests, and a polite stop)."""


def lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        if spec.schedule == "constant":
            return 1.0
        span = max(spec.steps - spec.warmup_steps, 1)
        progress = min((step - spec.warmup_steps) / span, 1.0)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_accelerator(spec: TrainSpec, out_dir: Path):
    mp = spec.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    log_with = None if spec.report_to == "none" else spec.report_to
    # our batch_at already gives each rank its share of one global batch, so the schedule must
    # advance once per optimizer step (accelerate's default steps it once per process)
    # the Accelerator places the model and batches (cuda:<local rank> per process); autocast
    # runs the forward in bf16 while weights, gradients and AdamW state stay in their own dtype
    acc = Accelerator(mixed_precision=mp, log_with=log_with, step_scheduler_with_optimizer=False,
                      cpu=spec.device == "cpu",
                      project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")))
    return acc


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints (those with trainer_state.json), oldest first."""
    root = Path(out_dir) / "checkpoints"
    return sorted(p.parent for p in root.glob("step-*/trainer_state.json"))


class CorruptCheckpoint(RuntimeError):
    """No checkpoint of a stage can be read back; the message names each and what to do."""


def resume(acc, out_dir: Path) -> Path | None:
    """Load the newest checkpoint that reads back intact; a corrupt one (a truncated
    ``optimizer.bin`` after a crash or a full disk) is named in a warning and passed over, and
    training resumes from the previous one that still has its training state (normally only the
    latest has one; an older one keeps it when a crash came between writing the new checkpoint
    and pruning the old state). None when there is no checkpoint with a state."""
    # older checkpoints keep model/ only (see _save_checkpoint): only those with state/ can resume
    done = [c for c in checkpoints(out_dir) if (c / "state").is_dir()]
    bad = []
    for ckpt in reversed(done):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            acc.load_state(str(ckpt / "state"))
        except Exception as e:      # torch/safetensors/json raise many types for one truncated file
            bad.append(f"{ckpt.name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            if acc.is_main_process:
                warnings.warn(f"checkpoint {ckpt} cannot be read back ({bad[-1]}); resuming from the "
                              f"one before it. It is replaced when training reaches that step again.")
            continue
        return ckpt
    if bad:
        raise CorruptCheckpoint(f"no checkpoint under {out_dir / 'checkpoints'} reads back: "
                                f"{'; '.join(bad)}. Delete {out_dir / 'checkpoints'} to start the stage "
                                f"afresh (or rerun with --force)")
    return None


def _save_checkpoint(acc, out_dir: Path, step: int, history: list, save_fn, keep: bool) -> Path:
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp / "state"))
        acc.wait_for_everyone()            # every rank wrote its RNG state before the rename
        if acc.is_main_process:
            if save_fn is not None:
                save_fn(tmp / "model")
            write_json(tmp / "trainer_state.json", {"step": step, "history": history})
    except BaseException:                  # disk full, interrupted: no half-written step-N.tmp left
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(out_dir):
            if old == final:
                continue
            if not keep:
                shutil.rmtree(old)
            elif (old / "state").exists():
                # resume only ever reads the latest state: older checkpoints keep their model
                # (for 07/08) and drop optimizer, scheduler and RNG (2/3 of a full-training checkpoint)
                shutil.rmtree(old / "state")
    acc.wait_for_everyone()
    return final


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with its tensors (also inside dicts, lists and tuples) on ``device``: batch
    functions build batches on the CPU, the model may live on a GPU."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _fused_adamw_ok(params: list[torch.nn.Parameter], acc) -> bool:
    """Use torch's fused AdamW (one kernel for all parameters) where it applies: floating-point
    parameters on CPU or CUDA.
    ``transformers.Trainer`` does the same by default; on CPU the per-parameter loop it replaces
    was ~7% of a step for a small model (bench/train_vs_trainer.py)."""
    return (all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params))


def check_distributed(distributed_type: str, mixed_precision: str, full_training: bool) -> None:
    """Refuse the distributed set-ups that would train or save something else than asked (see
    the module docstring), in one line naming what to use instead."""
    if distributed_type == "DEEPSPEED":
        raise ValueError("DeepSpeed is not supported: it saves bf16 model folders and ignores the stage's "
                         "max_grad_norm; launch with --config_file params/accelerate/ddp.yaml")
    if distributed_type == "FSDP" and mixed_precision != "no":
        raise ValueError(f"FSDP with mixed_precision {mixed_precision!r} casts RoPE's inv_freq and the gradient "
                         "reduction to that dtype: launch with params/accelerate/ddp.yaml, or FSDP with "
                         "--mixed_precision no")
    if distributed_type == "FSDP" and not full_training:
        raise ValueError("FSDP clips each shard by its own norm when only some parameters train (stages 03, "
                         "04, LoRA): launch with params/accelerate/ddp.yaml")


def plain_forward(module: torch.nn.Module) -> torch.nn.Module:
    """Take accelerate's autocast wrapper off ``module.forward`` (``prepare`` installs it on the
    object, keeping the original in ``_original_forward``); returns the module."""
    original = module.__dict__.pop("_original_forward", None)
    if original is not None:
        module.__dict__.pop("forward", None)
        if module.forward != original:      # the original was itself set on the object
            module.forward = original
    return module


def train(modules: list[torch.nn.Module], batch_at: Callable, loss_fn: Callable, spec: TrainSpec,
          out_dir: str | Path, eval_fn: Callable[[], dict] | None = None,
          save_fn: Callable[[Path], Any] | None = None, tokens_in: Callable[[Any], int] | None = None,
          stop_at: int | None = None, desc: str = "train") -> dict:
    """Train the trainable parameters of ``modules``; resume from ``out_dir`` if it has checkpoints.

    Returns ``{"history": [...], "evals": [...], "checkpoints": [...], "train_seconds",
    "tokens_per_second", "resumed_from"}``. ``stop_at`` raises :class:`Interrupted` after that
    step (used to test resumption).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(spec, out_dir)
    set_seed(spec.seed)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter has requires_grad=True")
    check_distributed(acc.distributed_type.name, acc.mixed_precision,
                      len(params) == sum(1 for m in modules for _ in m.parameters()))
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay,
                            fused=_fused_adamw_ok(params, acc))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    prepared = acc.prepare(*modules, opt, sched)
    modules_p, opt, sched = list(prepared[:len(modules)]), prepared[-2], prepared[-1]
    for m in modules:            # autocast only where this loop puts it (see the module docstring)
        plain_forward(m)

    history: list[dict] = []
    start, resumed_from = 0, None
    last = resume(acc, out_dir)
    if last is not None:
        state = json.loads((last / "trainer_state.json").read_text())
        start, history, resumed_from = state["step"], state["history"], str(last)
    if acc.is_main_process and spec.report_to != "none":
        acc.init_trackers(desc.replace(" ", "_"), config={k: v for k, v in asdict(spec).items()})

    evals = [h for h in history if "eval" in h]
    if start == 0 and eval_fn is not None:
        with acc.autocast():
            evals.append({"step": 0, "eval": eval_fn()})
        history.append(evals[-1])
    if start >= spec.steps:
        _end(acc)
        return _result(history, out_dir, 0.0, 0, resumed_from)

    for m in modules_p:
        m.train()
    t0, n_tokens = time.time(), 0
    bar = tqdm(range(start, spec.steps), initial=start, total=spec.steps, desc=desc,
               disable=not acc.is_local_main_process, dynamic_ncols=True)
    for step in bar:
        logs_acc: dict[str, float] = {}
        for micro in range(spec.grad_accum):
            batch = to_device(batch_at(step, micro, acc.process_index, acc.num_processes), acc.device)
            sync = micro == spec.grad_accum - 1
            ctx = acc.no_sync(modules_p[0]) if not sync and acc.num_processes > 1 else nullcontext()
            with ctx:
                with acc.autocast():
                    loss, logs = loss_fn(modules_p, batch)
                acc.backward(loss / spec.grad_accum)
            # the logged loss is the mean over processes (each rank saw its share of the batch)
            shown = acc.reduce(loss.detach(), reduction="mean") if acc.num_processes > 1 else loss.detach()
            for k, v in {"loss": shown.item(), **logs}.items():
                logs_acc[k] = logs_acc.get(k, 0.0) + float(v) / spec.grad_accum
            n_tokens += (tokens_in(batch) if tokens_in else 0) * acc.num_processes
        if spec.max_grad_norm:
            acc.clip_grad_norm_(params, spec.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done_steps = step + 1
        elapsed = time.time() - t0
        rec = {"step": done_steps, "lr": sched.get_last_lr()[0], **logs_acc}
        if tokens_in:
            rec["tokens_per_second"] = n_tokens / max(elapsed, 1e-9)
        if done_steps % spec.log_every == 0 or done_steps == spec.steps:
            history.append(rec)
            acc.log({k: v for k, v in rec.items() if k != "step"}, step=done_steps)
        bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items() if k in ("loss", "tokens_per_second")})
        is_last = done_steps == spec.steps
        if eval_fn is not None and ((spec.eval_every and done_steps % spec.eval_every == 0) or is_last):
            for m in modules_p:
                m.eval()
            with acc.autocast():
                ev = {"step": done_steps, "eval": eval_fn()}
            for m in modules_p:
                m.train()
            history.append(ev)
            acc.log({f"eval/{k}": v for k, v in ev["eval"].items() if isinstance(v, (int, float))},
                    step=done_steps)
        if (spec.save_every and done_steps % spec.save_every == 0) or is_last:
            _save_checkpoint(acc, out_dir, done_steps, history, save_fn, spec.keep_checkpoints)
        if stop_at is not None and done_steps >= stop_at and not is_last:
            bar.close()
            _end(acc)
            raise Interrupted(f"stopped after step {done_steps} (stop_at)")
    bar.close()
    _end(acc)
    for m in modules_p:
        m.eval()
    return _result(history, out_dir, time.time() - t0, n_tokens, resumed_from)


def _end(acc) -> None:
    """Close the trackers. Not ``acc.end_training()``: it also destroys the process group, and a
    stage still synchronises its processes after training (rank 0 writes ``model/``, the others
    wait); ``python -m lib.train`` destroys the group when the stage is finished."""
    for tracker in acc.trackers:
        tracker.finish()


def _result(history, out_dir, seconds, n_tokens, resumed_from) -> dict:
    return {"history": history, "evals": [h for h in history if "eval" in h],
            "checkpoints": [str(p) for p in checkpoints(out_dir)], "train_seconds": seconds,
            "tokens_per_second": n_tokens / seconds if seconds else None, "resumed_from": resumed_from}


