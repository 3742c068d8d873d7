"""Chat vectors: add what instruction tuning taught an English model to our Korean one.

A chat vector is the weight difference between an English instruct model and the base it was
tuned from (Huang et al. 2023, "Chat Vector"); adding it to a model continued from the same base
transfers chat behaviour without Korean chat data::

    vector = chat_vector(base.state_dict(), instruct.state_dict())     # instruct - base, fp32
    report = apply_chat_vector(model, vector, weight=1.0)               # model += weight * vector
    report["applied"], report["partial"], report["skipped"]

    vector = load_chat_vector("princeton-nlp/Sheared-LLaMA-1.3B",       # Hub ids or local folders,
                              "princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT")  # one code path

Vocabulary expansion leaves the embedding and LM-head matrices of our model with more rows
(e.g. 39,478) than the vector's (32,000). The merged tokenizer keeps every base piece at its id
(stage 01 checks it), so row ``i < 32,000`` means the same token on both sides. ``rows``:

- ``"overlap"`` (default): add the vector to the shared leading rows only; the new Korean rows
  get nothing (there is no instruct-minus-base signal for tokens the English pair never had);
- ``"skip"``: leave any tensor whose shape differs untouched (what the Chat Vector paper does
  for Chinese-LLaMA's expanded embeddings).

Tensors whose shapes differ in anything but the row count are always skipped, as are names
matching ``skip``. Tied weights (one tensor under two names) are updated once. The report names
every tensor: applied, partial (with the row count), skipped (with the reason).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from transformers import AutoModelForCausalLM

ROWS_POLICIES = ("overlap", "skip")


def _rows_only_differ(a: torch.Size, b: torch.Size) -> bool:
    return len(a) == len(b) and len(a) >= 1 and tuple(a[1:]) == tuple(b[1:])


def chat_vector(base_sd: Mapping[str, torch.Tensor], instruct_sd: Mapping[str, torch.Tensor],
                inplace: bool = False) -> dict[str, torch.Tensor]:
    """``instruct - base`` in float32 for every floating tensor the two state dicts share.

    Keys present on one side only are left out (e.g. an LM head tied on one side). If the two
    disagree on a tensor's row count only, the difference covers their shared leading rows;
    any other shape disagreement is an error (not a base/instruct pair). ``inplace=True``
    reuses ``instruct_sd``'s float32 tensors to save one model's worth of memory.
    """
    out: dict[str, torch.Tensor] = {}
    done: dict[tuple, str] = {}        # tied tensors (one storage, two names) are subtracted once
    for name, inst in instruct_sd.items():
        base = base_sd.get(name)
        if base is None or not inst.is_floating_point():
            continue
        key = (inst.data_ptr(), tuple(inst.shape))
        if key in done:
            out[name] = out[done[key]]
            continue
        done[key] = name
        if base.shape != inst.shape:
            if not _rows_only_differ(base.shape, inst.shape):
                raise ValueError(f"chat_vector: '{name}' is {tuple(base.shape)} in the base but "
                                 f"{tuple(inst.shape)} in the instruct model: these are not a "
                                 "base model and its instruction-tuned version")
            n = min(base.shape[0], inst.shape[0])
            base, inst = base[:n], inst[:n]
        if inplace and inst.dtype == torch.float32:
            out[name] = inst.sub_(base.to(inst.device, torch.float32))
        else:
            out[name] = inst.float() - base.to(inst.device).float()
    if not out:
        raise ValueError("chat_vector: the two state dicts share no floating-point tensor")
    return out


@torch.no_grad()
def apply_chat_vector(model: torch.nn.Module, vector: Mapping[str, torch.Tensor], weight: float = 1.0,
                      skip: Iterable[str] = (), rows: str = "overlap") -> dict:
    """``param += weight * vector[name]`` for every parameter of ``model`` the vector covers.

    ``skip``: substrings of parameter names to leave alone (e.g. ``("embed_tokens", "lm_head")``).
    ``rows``: what to do when only the row count differs (see the module docstring).
    The sum is computed in float32 and cast to the parameter's dtype. Returns
    ``{"weight", "rows", "applied": [names], "partial": [{"name", "rows", "of"}],
    "skipped": [{"name", "reason"}], "unused": [vector keys that name no parameter],
    "params_changed": int}``.
    """
    if rows not in ROWS_POLICIES:
        raise ValueError(f"rows must be one of {ROWS_POLICIES}, got {rows!r}")
    skip = tuple(skip)
    report: dict = {"weight": float(weight), "rows": rows, "applied": [], "partial": [], "skipped": [],
                    "unused": [], "params_changed": 0}
    params = dict(model.named_parameters(remove_duplicate=False))
    seen: dict[int, str] = {}
    for name, p in params.items():
        if name not in vector:
            continue
        if id(p) in seen:
            report["skipped"].append({"name": name, "reason": f"tied to {seen[id(p)]} (applied once)"})
            continue
        seen[id(p)] = name
        v = vector[name]
        if any(s in name for s in skip):
            report["skipped"].append({"name": name, "reason": "excluded by skip"})
            continue
        if v.shape == p.shape:
            p.copy_((p.float() + weight * v.to(p.device)).to(p.dtype))
            report["applied"].append(name)
            report["params_changed"] += p.numel()
        elif _rows_only_differ(v.shape, p.shape) and rows == "overlap":
            n = min(v.shape[0], p.shape[0])
            p[:n] = (p[:n].float() + weight * v[:n].to(p.device)).to(p.dtype)
            report["partial"].append({"name": name, "rows": n, "of": p.shape[0]})
            report["params_changed"] += p[:n].numel()
        else:
            why = ("row count differs (rows: skip)" if _rows_only_differ(v.shape, p.shape)
                   else "shape differs")
            report["skipped"].append({"name": name, "reason": f"{why}: model {tuple(p.shape)}, "
                                                              f"vector {tuple(v.shape)}"})
    report["unused"] = sorted(set(vector) - set(params))
    if not report["applied"] and not report["partial"]:
        raise ValueError("apply_chat_vector changed nothing: no parameter name of the model matches "
                         f"the vector (model e.g. {next(iter(params), None)!r}, vector e.g. "
                         f"{next(iter(vector), None)!r}), or every match was skipped")
    return report


def load_chat_vector(base: str, instruct: str) -> dict[str, torch.Tensor]:
    """The chat vector of two checkpoints (Hub ids or local folders), computed on the CPU.

    Both load through ``from_pretrained`` in float32; the instruct weights are turned into the
    difference in place, so peak memory is about two fp32 copies of the model.
    """
    sd_base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    sd_inst = AutoModelForCausalLM.from_pretrained(instruct, dtype=torch.float32).state_dict()
    vector = chat_vector(sd_base, sd_inst, inplace=True)
    del sd_base
    return vector


def summary(report: dict) -> dict:
    """Counts of a report, for metrics and a notebook line."""
    return {"applied": len(report["applied"]), "partial": len(report["partial"]),
            "skipped": len(report["skipped"]), "unused": len(report["unused"]),
            "params_changed": report["params_changed"]}
