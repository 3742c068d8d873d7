"""DPO after instruction tuning (stage 06 with ``dpo: true``): preference pairs, sigmoid loss.

Direct preference optimisation (Rafailov et al. 2023) moves the instruction-tuned model (the
*policy*) towards the chosen answer of each pair and away from the rejected one, measured against
a frozen *reference*, the model DPO starts from::

    reward(y) = beta * (log pi(y | x) - log pi_ref(y | x))       summed over the answer tokens + EOS
    loss      = -log sigmoid(reward(chosen) - reward(rejected))

Pairs (:mod:`lib.data.preferences`) are tokenized exactly as 06 tokenizes a record, so the policy is
scored on the very ids it was tuned on. ``dpo_method``:

- ``full``: every parameter trains; the reference is the starting model;
- ``lora``: adapters on ``lora_targets`` (no ``modules_to_save``: embeddings and LM head stay
  frozen); the reference is the same model with its adapters disabled, as trl does.

The reference log-probabilities are computed once before training (trl's
``precompute_ref_log_probs``): the reference is frozen and the pairs are fixed, so this is exact
and keeps no second model in memory. In 06: SFT's ``model/`` becomes ``sft_model/``, DPO trains
into ``<stage>/dpo/checkpoints/`` (resumable as every stage), and its final model is 06's
``model/``. 07 scores the SFT model as the last SFT checkpoint (``06_instruction_tuning-step-N``)
next to the DPO model (``06_instruction_tuning``): the with/without-DPO rows of 07 and 08.

Why our loop and not trl's ``DPOTrainer`` (``bench/dpo_vs_trl.py``, toy SFT model, 317 pairs, 60
steps x 16 pairs, CPU fp32, 1 thread, load ~4 on 2 cores): trl 1.16 works here (transformers 5.24,
peft LoRA; fed conversational pairs it renders them with 06's chat template and gets 06's ids for
100% of the pairs), but it is not faster: a median step takes 1.10x our time with full training and 1.50x
with LoRA (whole call 1.03x / 1.33x), and 2.2x / 2.3x with its default reference forward at every
step; peak memory +80 to +210 MB. Ours adds no dependency, and DPO gets what every stage has:
``step-N/model`` folders 07 can score, resume of model, optimizer, RNG and data position, the
accelerate launch configs; the loss is a few lines (:func:`dpo_loss`, as trl's ``sigmoid``).

    python -m lib.train 06 params/toy.yaml      # with 06_instruction_tuning.dpo: true
"""
from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lib.core.stage import Config
from lib.data import preferences as P
from lib.data.instructions import Example, collate
from lib.modeling.chunked_ce import DEFAULT_CHUNK_TOKENS, token_nll
from lib.modeling.model import pad_id_of
from lib.train.common import load_start, measured, precision_of, train_spec, trainable_summary
from lib.train.consistency import consistency_pairs
from lib.train.loop import train
from lib.train.pretrain import merged_saver

DPO_METHODS = ("full", "lora")
# 06's DPO parameters and the TrainSpec fields they stand for (the rest are shared with SFT)
SPEC_OF = {"dpo_steps": "steps", "dpo_lr": "lr", "dpo_warmup_steps": "warmup_steps",
           "dpo_grad_accum": "grad_accum", "dpo_save_every": "save_every", "dpo_eval_every": "eval_every"}


# ----------------------------------------------------------------------------- loss

def sequence_logps(model, batch: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Per row, the summed log-probability of the target tokens (labels != -100), without the full
    logits (:func:`lib.modeling.chunked_ce.token_nll`; ``chunk_tokens=0``: with)."""
    return -token_nll(model, batch, chunk_tokens)[0].sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean sigmoid DPO loss, chosen rewards, rejected rewards) of a batch of pairs."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


# ----------------------------------------------------------------------------- batches

def pair_batch(pairs: Sequence[tuple[Example, Example]], ref: torch.Tensor, pad_id: int) -> dict:
    """Chosen rows first, then the rejected ones (one forward for both), with their reference
    log-probs ``ref`` ([n, 2]: chosen, rejected)."""
    b = collate([c for c, _ in pairs] + [r for _, r in pairs], pad_id)
    b["ref"] = ref
    return b


class PairStream:
    """Micro-batches of pairs as a pure function of the step: each pass over the training pairs
    in a fresh seeded order; rank ``r`` of ``w`` takes rows ``r::w`` of the global batch."""

    def __init__(self, pairs: Sequence[tuple[Example, Example]], ref: torch.Tensor, batch_size: int,
                 grad_accum: int, seed: int, pad_id: int):
        if not pairs:
            raise ValueError("no preference pair to train on")
        self.pairs, self.ref, self.pad_id = list(pairs), ref, pad_id
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, 62, epoch]).permutation(len(self.pairs))
        return self._orders[epoch]

    def indices(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> list[int]:
        if self.batch_size % world:
            raise ValueError(f"dpo_batch_size {self.batch_size} does not split evenly over {world} processes")
        first = (step * self.grad_accum + micro) * self.batch_size
        n = len(self.pairs)
        rows = [int(self._order(g // n)[g % n]) for g in range(first, first + self.batch_size)]
        return rows[rank::world]

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict:
        idx = self.indices(step, micro, rank, world)
        return pair_batch([self.pairs[i] for i in idx], self.ref[idx], self.pad_id)

    def epochs(self, steps: int) -> float:
        return steps * self.grad_accum * self.batch_size / len(self.pairs)


def loss_fn(beta: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Callable:
    """The loop's ``loss_fn``: DPO loss, and reward accuracy and margin of the batch as logs."""
    def fn(modules, batch):
        logps = sequence_logps(modules[0], batch, chunk_tokens)
        n = batch["ref"].shape[0]
        loss, ch, rj = dpo_loss(logps[:n], logps[n:], batch["ref"][:, 0], batch["ref"][:, 1], beta)
        return loss, {"reward_accuracy": float((ch > rj).float().mean()), "margin": float((ch - rj).mean()),
                      "chosen_reward": float(ch.mean()), "rejected_reward": float(rj.mean())}
    return fn


# ----------------------------------------------------------------------------- scoring

def reference_context(model):
    """The context in which ``model`` is the reference: adapters disabled for a peft model (the
    starting model, as trl uses it), nothing for a plain one (call it before training)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@torch.no_grad()
def pair_logps(model, pairs: Sequence[tuple[Example, Example]], pad_id: int, batch_size: int = 16,
               reference: bool = False, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """[n, 2] summed log-probs (chosen, rejected) of ``pairs`` under ``model`` (in eval mode);
    ``reference``: under its reference (:func:`reference_context`)."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with reference_context(model) if reference else nullcontext():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            b = collate([c for c, _ in chunk] + [r for _, r in chunk], pad_id)
            lp = sequence_logps(model, {k: v.to(dev) for k, v in b.items()}, chunk_tokens).float().cpu()
            out.append(torch.stack([lp[:len(chunk)], lp[len(chunk):]], 1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2))


def pair_summary(policy: torch.Tensor, ref: torch.Tensor, beta: float, kinds: Sequence[str]) -> dict:
    """Reward accuracy (share of pairs whose chosen reward beats the rejected one) and mean reward
    margin, plus the model's own preference (share with log p(chosen) > log p(rejected), mean
    log-prob margin), overall and per pair kind. Before training the policy is the reference:
    rewards are 0 and reward accuracy is 0 by definition; ``logp_accuracy`` then reads the
    starting model's own preference."""
    def one(idx):
        p, r = policy[idx], ref[idx]
        reward = beta * (p - r)
        margin = reward[:, 0] - reward[:, 1]
        return {"n": len(idx), "reward_accuracy": float((margin > 0).float().mean()),
                "margin": float(margin.mean()), "chosen_reward": float(reward[:, 0].mean()),
                "rejected_reward": float(reward[:, 1].mean()),
                "logp_accuracy": float((p[:, 0] > p[:, 1]).float().mean()),
                "logp_margin": float((p[:, 0] - p[:, 1]).mean())}
    if not len(kinds):
        return {"n": 0}
    out = one(list(range(len(kinds))))
    out["by_kind"] = {k: one([i for i, x in enumerate(kinds) if x == k]) for k in sorted(set(kinds))}
    return out


# ----------------------------------------------------------------------------- the step of 06

def check_dpo(cfg: Any) -> None:
    """Refuse DPO settings that cannot work, before any heavy work."""
    if not cfg.get("dpo"):
        return
    if cfg.dpo_method not in DPO_METHODS:
        raise ValueError(f"dpo_method must be one of {DPO_METHODS}, got {cfg.dpo_method!r}")
    if not 0.0 <= cfg.dpo_heldout < 1.0:
        raise ValueError(f"dpo_heldout must be in [0, 1), got {cfg.dpo_heldout}")


def spec_of(cfg: Any):
    """DPO's TrainSpec: 06's ``dpo_*`` values, the other fields shared with SFT."""
    sub = Config(cfg)
    for k, v in SPEC_OF.items():
        sub[v] = cfg[k]
    return train_spec(sub)


def load_pairs(cfg: Any, exclude: Sequence[str] = (), model=None, tok=None, template=None
               ) -> tuple[list[dict], dict]:
    """06's preference pairs: the toy world's (``dpo_pairs: toy``), consistency pairs from the
    parallel file answered by ``model`` (``consistency``, :mod:`lib.train.consistency`), or a JSONL
    file's."""
    if cfg.dpo_pairs == "consistency":
        facts = cfg.path("{toy}/eval/facts.jsonl")
        facts = facts if cfg.get("base_model") == "toy" and facts.exists() else None
        with measured(cfg):
            pairs, rep = consistency_pairs(model, tok, template, cfg.path(cfg.parallel_file),
                                           cfg.path(cfg.entities_file), facts, cfg.seed, exclude=exclude)
        rep["source"] = "consistency"
    elif cfg.dpo_pairs == "toy":
        pairs, rep = P.toy_pairs(cfg.path("{toy}/data/instructions.jsonl"), cfg.path("{toy}/data/entities.jsonl"),
                                 cfg.path("{toy}/eval/facts.jsonl"), cfg.seed, exclude=exclude)
        rep["source"] = "toy"
    else:
        pairs = P.read_pairs(cfg.path(cfg.dpo_pairs))
        rep = {"source": str(cfg.path(cfg.dpo_pairs)), "pairs": len(pairs)}
    if cfg.dpo_max_pairs:
        pairs = pairs[:cfg.dpo_max_pairs]
    if not pairs:
        raise ValueError(f"no preference pair from {rep['source']}")
    return pairs, rep


def load_policy(cfg: Any, folder: str | Path):
    """(model, tokenizer) DPO trains: the model in ``folder``, with LoRA adapters for ``lora``."""
    model, tok, _ = load_start(cfg, str(folder))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.dpo_method == "lora":
        from peft import LoraConfig, get_peft_model  # LoRA only; peft: ~3.5 s to import
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model, tok


def keep_sft_model(stage_dir: Path) -> Path:
    """Rename SFT's ``model/`` to ``sft_model/`` (replacing an older one): DPO starts from it and
    writes the stage's ``model/``."""
    src, dst = Path(stage_dir) / "model", Path(stage_dir) / "sft_model"
    if src.is_dir():
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)
    if not dst.is_dir():
        raise FileNotFoundError(f"{src}: no instruction-tuned model to start DPO from")
    return dst


def train_dpo(cfg: Any, sft_dir: Path, template, exclude: Sequence[str] = ()) -> dict:
    """Train DPO from ``sft_dir`` into ``<stage>/dpo/``; returns what 06's metrics record
    (``model`` is the trained policy, in eval mode, for the caller to inspect and free)."""
    check_dpo(cfg)
    model, tok = load_policy(cfg, sft_dir)
    pairs, source = load_pairs(cfg, exclude, model, tok, template)
    train_pairs, held_pairs = P.split_pairs(pairs, cfg.dpo_heldout, cfg.seed)
    pad, chunk = pad_id_of(tok), cfg.loss_chunk_tokens
    train_enc, train_pairs, train_rep = P.encode_pairs(tok, train_pairs, template, cfg.max_len)
    held_enc, held_pairs, held_rep = P.encode_pairs(tok, held_pairs, template, cfg.max_len)
    t0 = time.time()
    # the reference never changes: its log-probs once, before training (exact, no second model),
    # in the precision the policy is scored in (the loop's autocast): at step 0 both are the same
    # weights, so every reward is 0 only if both are measured alike
    with measured(cfg):
        ref_train = pair_logps(model, train_enc, pad, cfg.dpo_batch_size, reference=True, chunk_tokens=chunk)
        ref_held = pair_logps(model, held_enc, pad, cfg.dpo_batch_size, reference=True, chunk_tokens=chunk)
    ref_seconds = time.time() - t0
    kinds = [p["kind"] for p in held_pairs]
    stream = PairStream(train_enc, ref_train, cfg.dpo_batch_size, cfg.dpo_grad_accum, cfg.seed, pad)
    spec = spec_of(cfg)
    eval_fn = None
    if held_enc:
        def eval_fn() -> dict:
            s = pair_summary(pair_logps(model, held_enc, pad, cfg.dpo_batch_size, chunk_tokens=chunk), ref_held, cfg.dpo_beta, kinds)
            return {k: s[k] for k in ("reward_accuracy", "margin", "logp_accuracy")}
    save_cfg = Config(cfg)
    save_cfg["method"] = cfg.dpo_method
    out_dir = Path(cfg.stage_dir) / "dpo"
    t1 = time.time()
    result = train([model], stream.batch, loss_fn(cfg.dpo_beta, chunk), spec, out_dir, eval_fn=eval_fn,
                   save_fn=merged_saver(save_cfg, model, tok, str(sft_dir)),
                   tokens_in=lambda b: int(b["attention_mask"].sum()), desc=f"06 DPO ({cfg.dpo_method})")
    seconds = time.time() - t1
    train_kinds = [p["kind"] for p in train_pairs]
    with measured(cfg):
        after_train = pair_logps(model, train_enc, pad, cfg.dpo_batch_size, chunk_tokens=chunk)
        after_held = pair_logps(model, held_enc, pad, cfg.dpo_batch_size, chunk_tokens=chunk)
    held = {"before": pair_summary(ref_held, ref_held, cfg.dpo_beta, kinds),
            "after": pair_summary(after_held, ref_held, cfg.dpo_beta, kinds)}
    losses = [h for h in result["history"] if "loss" in h]
    evals = result["evals"]
    return {
        "model": model, "result": result,
        "metrics": {
            "method": cfg.dpo_method, "beta": cfg.dpo_beta, "start": str(sft_dir), "precision": precision_of(cfg),
            **trainable_summary(model),
            "pairs": {**source, "train": P.counts(train_pairs), "heldout": P.counts(held_pairs),
                      "encode": {"train": train_rep, "heldout": held_rep}, "epochs": stream.epochs(spec.steps),
                      "example": {k: train_pairs[0][k] for k in ("prompt", "chosen", "rejected", "kind")}},
            "loss": {"first": losses[0]["loss"], "last": losses[-1]["loss"]},
            "heldout": held,
            "train_pairs": {"before": pair_summary(ref_train, ref_train, cfg.dpo_beta, train_kinds),
                            "after": pair_summary(after_train, ref_train, cfg.dpo_beta, train_kinds)},
            "curves": {"step": [h["step"] for h in losses], "loss": [h["loss"] for h in losses],
                       "reward_accuracy": [h["reward_accuracy"] for h in losses],
                       "margin": [h["margin"] for h in losses], "lr": [h["lr"] for h in losses],
                       "eval_step": [e["step"] for e in evals],
                       **{f"eval_{k}": [e["eval"][k] for e in evals] for k in (evals[0]["eval"] if evals else {})}},
            "reference_seconds": ref_seconds, "train_seconds": seconds,
            "tokens_per_second": result["tokens_per_second"],
            "checkpoints": result["checkpoints"], "resumed_from": result["resumed_from"],
        }}


def pairs_table(metrics: dict):
    """06's DPO metrics as a DataFrame: one row per split (held-out, train) and pair kind, the
    reward accuracy, margin and the model's own preference before and after DPO."""
    import pandas as pd  # pandas: ~0.25 s to import; only the notebook's table; check reads this module
    rows = []
    for split, key in (("heldout", "heldout"), ("train", "train_pairs")):
        before, after = metrics[key]["before"], metrics[key]["after"]
        if not after["n"]:
            continue                  # dpo_heldout: 0 holds nothing out
        for kind in ["all", *sorted(after.get("by_kind", {}))]:
            b, a = (before, after) if kind == "all" else (before["by_kind"][kind], after["by_kind"][kind])
            rows.append({"split": split, "kind": kind, "n": a["n"], "reward_accuracy": a["reward_accuracy"],
                         "margin": a["margin"], "logp_accuracy_before": b["logp_accuracy"],
                         "logp_accuracy_after": a["logp_accuracy"], "logp_margin_before": b["logp_margin"],
                         "logp_margin_after": a["logp_margin"]})
    return pd.DataFrame(rows)
