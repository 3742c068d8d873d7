"""What every training stage shares: its starting model, its TrainSpec, saving its model.

A stage module (``contrastive``, ``head``, ``pretrain``, ``sft``) exposes ``run(cfg) -> dict``;
the notebook and ``python -m lib.train`` both call it, so the two paths cannot drift apart.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import accelerate
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.core.io import atomic_dir
from lib.modeling.model import auto_device, compute_context, load_model, precision_record, precision_settings
from lib.train.loop import TrainSpec

SPEC_KEYS = ("steps", "lr", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay", "grad_accum",
             "max_grad_norm", "save_every", "eval_every", "keep_checkpoints", "report_to", "seed", "device")


def train_spec(cfg: Any) -> TrainSpec:
    """A TrainSpec from the stage parameters that share its field names; ``precision`` becomes
    accelerate's ``mixed_precision`` (see :func:`lib.modeling.model.precision_settings`)."""
    spec = {k: cfg[k] for k in SPEC_KEYS if k in cfg}
    _, spec["mixed_precision"] = precision_settings(cfg.get("precision", "auto"), cfg.get("device", "auto"))
    return TrainSpec(**spec)


def measured(cfg: Any):
    """The context a stage's metrics are computed in: the precision it trains in (bf16 autocast
    over fp32 weights on a GPU by default, plain fp32 on CPU), so before/after metrics, the
    evaluation during training (the loop uses the same autocast) and DPO's reference agree."""
    dev = auto_device(cfg.get("device", "auto"))
    _, mixed = precision_settings(cfg.get("precision", "auto"), dev)
    return compute_context(mixed, dev)


def precision_of(cfg: Any) -> dict:
    """``metrics.json``'s record of the precision a stage trained, measured and saved in."""
    return precision_record(cfg.get("precision", "auto"), auto_device(cfg.get("device", "auto")))


def load_measured(cfg: Any, folder: str | Path):
    """(model, tokenizer) of a saved ``folder`` in this stage's training weight dtype, in eval mode,
    to measure it as the stage measured the model it trained (under :func:`measured`)."""
    dev = auto_device(cfg.get("device", "auto"))
    weights, _ = precision_settings(cfg.get("precision", "auto"), dev)
    return load_model(str(folder), str(dev), dtype=str(weights).replace("torch.", ""))


def load_start(cfg: Any, init_from: str | None = None):
    """(model, tokenizer, folder) of the model this stage starts from (``cfg.init_from``), in the
    training weight dtype of ``cfg.precision`` (fp32 unless pure ``bf16`` is asked for), on this
    process's device (the one its Accelerator will use: ``cuda:<local rank>``)."""
    folder = cfg.model_from(init_from or cfg.get("init_from", "auto"))
    dev = auto_device(cfg.get("device", "auto"))
    dtype, _ = precision_settings(cfg.get("precision", "auto"), dev)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(dev)
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok, folder


def saver(model, tok, source_folder: str | Path):
    """``save_fn`` for the loop: a ``from_pretrained`` folder (plus the SentencePiece model)."""
    sp = Path(source_folder) / "tokenizer.model"

    def save(folder: Path) -> None:
        m = model.module if hasattr(model, "module") else model
        m.save_pretrained(folder)
        tok.save_pretrained(folder)
        if sp.exists():
            shutil.copy(sp, Path(folder) / "tokenizer.model")
    return save


def final_model(cfg: Any, result: dict) -> Path:
    """Copy the last checkpoint's model to ``<stage>/model`` (what later stages load). Under
    ``accelerate launch`` only the main process copies and every process waits for it: two ranks
    renaming the same folder race (ENOTEMPTY / FileNotFoundError)."""
    state = accelerate.PartialState()        # looked up when called: a test stands in another rank
    if state.is_main_process:
        last = Path(result["checkpoints"][-1]) / "model"
        with atomic_dir(cfg.stage_dir / "model", overwrite=True) as tmp:
            for f in last.iterdir():
                shutil.copy(f, tmp / f.name)
    state.wait_for_everyone()
    return cfg.stage_dir / "model"


def trainable_summary(model: torch.nn.Module) -> dict:
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": n_all, "params_trainable": n_train, "trainable_share": n_train / max(n_all, 1)}
