"""What stage 06 keeps of the model it starts from (issue 25): the levers against the erosion of
cross-lingual transfer during instruction tuning, each a parameter that is off by default.

- ``freeze: [embeddings, lm_head]`` and ``freeze_layers: N``: those parts (the input embeddings,
  the LM head, the bottom N transformer layers) get no gradient and end bit-identical to the
  starting model ("spurious forgetting", arXiv 2501.13453: early updates to the bottom layers and
  embeddings lose the alignment, not the knowledge).
- ``interpolate: w`` (1: off): the saved model is ``start + w * (tuned - start)``, in fp32: a
  post-hoc merge back toward the model 06 started from (for example 05's).
- Stage 1's contrastive term kept in 06 (``align_weight``) reuses 05's
  :func:`lib.train.align_terms.pretrain_with_alignment`; instructions in both languages
  (``parallel_share``) are :mod:`lib.data.parallel`; consistency preference pairs are
  :mod:`lib.train.consistency`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from lib.data.parallel import MODES
from lib.modeling.model import load_model, save_model

FREEZABLE = ("embeddings", "lm_head")


def retention_problems(values: Any) -> list[tuple[str, str]]:
    """``(key, why)`` for each knob with a value that cannot work ([] when all are fine)."""
    out = []
    parts = values.get("freeze") or []
    if not isinstance(parts, (list, tuple)) or [p for p in parts if p not in FREEZABLE]:
        out.append(("freeze", f"must be a list of parts from {list(FREEZABLE)} (and freeze_layers for the "
                              f"bottom transformer layers), got {parts!r}"))
    n = values.get("freeze_layers", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        out.append(("freeze_layers", f"must be an integer >= 0, got {n!r}"))
    w = values.get("interpolate", 1.0)
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0.0 <= w <= 1.0:
        out.append(("interpolate", f"must be in [0, 1] (1: the tuned model as trained, 0: the starting "
                                   f"model), got {w!r}"))
    share = values.get("parallel_share", 0.0)
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share < 1.0:
        out.append(("parallel_share", f"must be in [0, 1), got {share!r}"))
    if values.get("parallel_mode", "both") not in MODES:
        out.append(("parallel_mode", f"must be one of {list(MODES)}, got {values.get('parallel_mode')!r}"))
    return out


def check_retention(cfg: Any) -> None:
    """The knobs' values, before any work: a ValueError naming the first bad key."""
    for key, why in retention_problems(cfg):
        raise ValueError(f"{key} {why}")


def _base(model):
    """The transformers model under a peft wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_parameters(model, parts: Sequence[str], bottom_layers: int) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` of the parts to freeze (peft's trainable copies of the embeddings and
    head included)."""
    base = _base(model)
    n_layers = len(base.model.layers)
    if bottom_layers > n_layers:
        raise ValueError(f"freeze_layers = {bottom_layers}, but the model has {n_layers} layers")
    prefixes = [f"model.layers.{i}." for i in range(bottom_layers)]
    if "embeddings" in parts:
        prefixes.append("model.embed_tokens.")
    if "lm_head" in parts:
        prefixes.append("lm_head.")
    out = {}
    for name, p in base.named_parameters():
        # peft renames: base_model.model.<name>, modules_to_save.default, base_layer, lora_A ...
        plain = name.replace("modules_to_save.default.", "").replace("original_module.", "")
        if any(plain.startswith(pre) for pre in prefixes):
            out[name] = p
    if (parts or bottom_layers) and not out:
        raise ValueError(f"freeze {list(parts)} / freeze_layers {bottom_layers} matched no parameter of "
                         f"{type(base).__name__}")
    return out


def freeze(model, parts: Sequence[str], bottom_layers: int) -> dict:
    """Turn off the gradient of the frozen parts; returns what was frozen (parameter counts).
    The tied case: a head that shares the embeddings' weight is frozen with either."""
    frozen = frozen_parameters(model, parts, bottom_layers)
    for p in frozen.values():
        p.requires_grad_(False)
    return {"parts": list(parts), "bottom_layers": bottom_layers, "tensors": len(frozen),
            "params": sum(p.numel() for p in frozen.values())}


@torch.no_grad()
def interpolate(start_dir: str | Path, tuned_dir: str | Path, weight: float, device: str = "cpu") -> dict:
    """Overwrite ``tuned_dir`` with ``start + weight * (tuned - start)``, computed and saved in fp32;
    returns the relative size of the change kept (``|w (tuned - start)| / |tuned - start|``, which
    is ``weight``) and of the whole change."""
    start, _ = load_model(str(start_dir), device, dtype="fp32")
    tuned, tok = load_model(str(tuned_dir), device, dtype="fp32")
    s_state = start.state_dict()
    t_state = tuned.state_dict()
    missing = [k for k in t_state if k not in s_state or s_state[k].shape != t_state[k].shape]
    if missing:
        raise ValueError(f"interpolate: {start_dir} and {tuned_dir} differ in shape at {missing[:3]}: "
                         f"06 can only interpolate toward a model with the same vocabulary and layers")
    delta2 = 0.0
    for k, t in t_state.items():
        d = t - s_state[k]
        delta2 += float((d.double() ** 2).sum())
        t.copy_(s_state[k] + weight * d)
    del start
    sp = Path(tuned_dir) / "tokenizer.model"
    save_model(tuned, tok, tuned_dir, sp_model=sp if sp.exists() else None, overwrite=True)
    return {"weight": weight, "start": str(start_dir), "delta_norm": delta2 ** 0.5,
            "kept_norm": weight * delta2 ** 0.5}
