"""Models: load (Hub id or local folder, one code path), device and precision, measure perplexity,
save as a plain ``from_pretrained`` folder (growing a model to a merged vocabulary is
:mod:`lib.vocab.resize`).

    model, tok = load_model("princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT")   # or a local folder
    save_model(model, merged_tok, "outputs/toy/02_embedding_init/model")

Device and dtype are ``auto``. The device is this process's (``cuda:<local rank>`` under
``accelerate launch``, else ``cuda`` or ``cpu``). Models loaded to *evaluate* are bf16 on Ampere+
GPUs, fp16 on older ones and fp32 on CPU (bf16 weights on these CPUs are ~30x slower). Models
loaded to *train* follow ``precision`` (:func:`precision_settings`): by default fp32 weights with
bf16 autocast on CUDA, and every metric a stage compares runs in that same precision
(:func:`compute_context`).
"""
from __future__ import annotations

import math
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable

import torch
from accelerate import PartialState

from lib.core.io import atomic_dir

PRECISIONS = ("auto", "bf16-mixed", "fp16-mixed", "bf16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
# accelerate's mixed_precision -> the dtype autocast computes in (None: no autocast)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}
# drivers older than the pinned torch wheel's CUDA build need a wheel from this index (docs/running.md)
OLDER_DRIVER_INDEX = "https://download.pytorch.org/whl/cu128"


def cuda_missing_message(asked: str = "cuda") -> str:
    """One line: CUDA was asked for, torch sees no GPU, and what to do about it."""
    build = torch.version.cuda
    what = (f"this torch {torch.__version__} is a CUDA {build} build: the node's NVIDIA driver may be too "
            f"old for it (check nvidia-smi); for older drivers install torch from {OLDER_DRIVER_INDEX} "
            f"(pip install torch=={torch.__version__.split('+')[0]} --index-url {OLDER_DRIVER_INDEX})"
            if build else f"this torch {torch.__version__} is a CPU-only build: install a CUDA build "
            f"(see docs/running.md, GPU nodes; {OLDER_DRIVER_INDEX} for drivers older than R580)")
    return f"device {asked!r} asks for a CUDA GPU, but torch sees no GPU: {what}"


def cuda_capability(device: torch.device | None = None) -> tuple[int, int]:
    """Compute capability of ``device`` (of the current GPU when None): (8, 0) is Ampere."""
    return torch.cuda.get_device_capability(device)


def fast_bf16(device: torch.device) -> bool:
    """bf16 with tensor cores: Ampere (capability 8.0) and newer. Older GPUs (Colab's T4, V100)
    only emulate bf16 (``torch.cuda.is_bf16_supported()`` still says yes) and take fp16."""
    return device.type == "cuda" and cuda_capability(device) >= (8, 0)


def auto_device(device: str = "auto") -> torch.device:
    """This process's device. ``auto`` (and ``cuda``): the GPU accelerate assigns to this process
    (``cuda:<local rank>`` under ``accelerate launch``, so two processes never share GPU 0);
    ``auto`` without CUDA: the CPU. ``cuda`` without a GPU torch can see fails in one line
    (:func:`cuda_missing_message`) instead of training on the CPU for days."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return PartialState().device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(cuda_missing_message(str(device)))
    return torch.device("cpu" if device == "auto" else device)


def auto_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """The dtype to load a model in for *inference*: bf16 on Ampere+ GPUs, fp16 on older ones,
    fp32 on CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if fast_bf16(device) else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def resolve_precision(precision: str = "auto", device: torch.device | str = "auto") -> str:
    """The precision ``auto`` stands for on ``device``: ``bf16-mixed`` on Ampere+ GPUs,
    ``fp16-mixed`` (with a gradient scaler) on older GPUs, ``fp32`` on CPU; others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    # only the device *type* matters here: a named device is taken at its word (no process state)
    dev = auto_device(device) if device == "auto" else torch.device(device)
    if dev.type != "cuda":
        return "fp32"
    return "bf16-mixed" if fast_bf16(dev) else "fp16-mixed"


def precision_settings(precision: str = "auto", device: torch.device | str = "auto") -> tuple[torch.dtype, str]:
    """``(weight dtype, accelerate mixed_precision)`` for training.

    - ``auto``: on an Ampere or newer GPU, fp32 master weights, gradients and AdamW state with
      bf16 autocast (``bf16-mixed``); on an older GPU (T4, V100) the same with fp16 autocast and a
      gradient scaler (``fp16-mixed``: their bf16 is emulated, without tensor cores); on CPU plain fp32;
    - ``bf16-mixed`` / ``fp16-mixed``: as above on any device (CPU autocast casts as CUDA's does);
    - ``bf16``: pure bf16 weights and optimizer state, no autocast: half the memory of the
      weights and ~40% of the training state, but an update smaller than ~1/256 of a weight
      rounds away (at lr 2e-5 most do), so only for short runs or with care;
    - ``fp32``: everything in fp32, no autocast.
    """
    return {"bf16-mixed": (torch.float32, "bf16"), "fp16-mixed": (torch.float32, "fp16"),
            "bf16": (torch.bfloat16, "no"), "fp32": (torch.float32, "no")}[resolve_precision(precision, device)]


def compute_context(mixed_precision: str, device: torch.device | str):
    """The context a stage computes in under accelerate's ``mixed_precision`` (``bf16``, ``fp16``,
    ``no``): autocast to that dtype on ``device``'s type, or nothing. Training, the evaluation
    during training, before/after metrics and DPO's reference all run in it, so what a stage
    compares is measured in one precision (``metrics.json`` records which: :func:`precision_record`)."""
    if mixed_precision not in AUTOCAST_DTYPES:
        raise ValueError(f"mixed_precision must be one of {sorted(AUTOCAST_DTYPES)}, got {mixed_precision!r}")
    dtype = AUTOCAST_DTYPES[mixed_precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fp32_region(t: torch.Tensor):
    """A region where autocast is off for ``t``'s device: ops on fp32 inputs stay fp32 (autocast
    casts matmul inputs to bf16 whatever ``.float()`` made of them)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def precision_record(precision: str, device: torch.device | str = "auto") -> dict:
    """What ``metrics.json`` records of a stage's precision: its resolved name, the dtype of the
    weights it trains, the dtype its forward passes compute in (training, evaluation, before/after
    metrics and references alike) and the dtype of the model folders it saves."""
    name = resolve_precision(precision, device)
    weights, mp = precision_settings(name, device)
    auto = AUTOCAST_DTYPES[mp]
    short = lambda d: str(d).replace("torch.", "")  # noqa: E731
    return {"precision": name, "weights": short(weights),
            "compute": f"{short(auto)} autocast over {short(weights)} weights" if auto else short(weights),
            "saved": short(weights)}


def load_model(spec: str, device: str = "auto", dtype: str = "auto"):
    """Load a causal LM and its tokenizer from a Hub id or a local folder (same code path),
    on this process's device, in the inference dtype (:func:`auto_dtype`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # ~0.8 s to import; most of lib imports this module
    dev = auto_device(device)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=auto_dtype(dev, dtype)).to(dev)
    tok = AutoTokenizer.from_pretrained(spec)
    return model.eval(), tok


@torch.no_grad()
def text_nll(model, tok, lines: Iterable[str], max_len: int = 256, batch_size: int = 8) -> dict:
    """Negative log-likelihood of ``lines`` (BOS added): perplexity per token and bits per char.

    Bits per character compare across tokenizers; perplexity per token does not (a tokenizer
    with more, shorter tokens gets a lower perplexity for the same model quality).
    """
    lines = [ln for ln in lines if ln.strip()]
    dev = next(model.parameters()).device
    total_nll, total_tok, total_chars = 0.0, 0, 0
    for i in range(0, len(lines), batch_size):
        chunk = lines[i:i + batch_size]
        enc = [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in chunk]
        batch = pad_batch(enc)
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = ids[:, 1:]
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
        total_nll += nll.sum().item()
        total_tok += int(mask[:, 1:].sum().item())
        # characters actually scored (truncation may cut a line)
        total_chars += sum(len(tok.decode(e[1:], skip_special_tokens=True)) for e in enc)
    mean = total_nll / max(total_tok, 1)
    return {"ppl": math.exp(mean), "nll_per_token": mean, "tokens": total_tok,
            "bits_per_char": total_nll / max(total_chars, 1) / math.log(2)}


def save_model(model, tok, out_dir: str | Path, sp_model: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """``save_pretrained`` model + tokenizer atomically, plus the SentencePiece ``tokenizer.model``
    when given (transformers 5 does not write it, and the next vocab merge needs it)."""
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if sp_model:
            shutil.copy(sp_model, tmp / "tokenizer.model")
    return Path(out_dir)


def english_probe(tok, lines: list[str], max_len: int = 256) -> dict:
    """A fixed padded batch of token ids (with attention mask) to compare logits on."""
    return pad_batch([tok(t, truncation=True, max_length=max_len)["input_ids"] for t in lines])


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> dict:
    """Right-pad id lists into ``input_ids`` + ``attention_mask`` (Llama tokenizers have no pad)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[j, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def special_id(tok, name: str) -> int | None:
    """The id of a tokenizer's ``bos`` / ``eos`` / ``pad`` token, None when it has none."""
    return getattr(tok, f"{name}_token_id", None)


def pad_id_of(tok) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (Llama tokenizers have no pad)."""
    pid = special_id(tok, "pad")
    return pid if pid is not None else special_id(tok, "eos")


@torch.no_grad()
def logits_for(model, batch: dict) -> torch.Tensor:
    """fp32 logits of a probe batch, with padded positions zeroed so they never count."""
    dev = next(model.parameters()).device
    out = model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu()
    return out * batch["attention_mask"].unsqueeze(-1)
