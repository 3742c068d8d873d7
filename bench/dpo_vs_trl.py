"""Our DPO step of 06 (``lib.train.dpo`` on ``lib.train.loop``) vs trl's ``DPOTrainer``: same model, pairs, loss.

    .venv/bin/python bench/dpo_vs_trl.py --quick                  # smoke run, 5 steps
    .venv/bin/python bench/dpo_vs_trl.py                          # 60 steps of 16 pairs, full and LoRA
    .venv/bin/python bench/dpo_vs_trl.py --run toy                # the SFT model and pairs of outputs/toy

Needs a finished toy run up to 06 (``outputs/<run>/06_instruction_tuning/model`` or ``sft_model``,
and its ``00_toy_world``) and trl (``pip install trl``; not a dependency of this project: the
script says so and stops when it is missing). Both variants get the toy world's DPO pairs of
:mod:`lib.data.preferences` (training split), the same SFT model (fp32, CPU unless CUDA is there), sigmoid
loss with the same beta, AdamW at a constant lr, no weight decay, grad-norm clip 1.0, batch 16
pairs, the same steps and torch threads; the reference log-probs precomputed in both
(``precompute_ref_log_probs=True``; ``--trl-ref-forward`` also times trl's default, a reference
forward every step). trl is fed conversational pairs, so it renders them with the chat template
06 saved; the script reports the share of pairs whose trl token ids equal ours (06's segment ids).

Timed: the whole ``train()`` call of each (trl: ``DPOTrainer(...)`` construction, which tokenizes
and precomputes the reference, plus ``trainer.train()``; ours: tokenizing, the reference pass and
``train()``, which writes one final checkpoint as 06 does), and the median optimizer step.
Each variant runs in its own spawned process. Fair to trl: ``save_strategy="no"``, no eval,
``report_to=[]``, no dataloader workers, its default optimizer (fused AdamW, as ours).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import Timer, emit, isolated, table

OURS, TRL = "ours (lib.train.dpo)", "trl DPOTrainer"


def toy_inputs(run: str):
    from lib.core import paths
    from lib.data import preferences as P
    rd = paths.run_dir(run)
    sft = rd / "06_instruction_tuning" / "sft_model"
    if not sft.is_dir():
        sft = rd / "06_instruction_tuning" / "model"
    toy = rd / "00_toy_world"
    if not (sft / "config.json").exists() or not toy.is_dir():
        raise SystemExit(f"needs a toy run up to 06 in {rd}: python -m lib.pipeline run params/toy.yaml --only 00,01,02,03,04,05,06")
    pairs, _ = P.toy_pairs(toy / "data/instructions.jsonl", toy / "data/entities.jsonl", toy / "eval/facts.jsonl", 1234)
    train, _ = P.split_pairs(pairs, 0.2, 1234)
    return str(sft), train


def _threads(n):
    import torch
    torch.set_num_threads(n)


class _StepTimes:
    def __init__(self):
        self.t, self.times = None, []

    def tick(self):
        now = time.perf_counter()
        if self.t is not None:
            self.times.append(now - self.t)
        self.t = now


def run_ours(args, sft: str, pairs: list[dict], method: str) -> dict:
    _threads(args.threads)
    import statistics

    from lib.core.stage import Config
    from lib.data import preferences as P
    from lib.data.instructions import Template
    from lib.modeling.model import pad_id_of
    from lib.train import dpo
    from lib.train.loop import TrainSpec, train
    from lib.train.pretrain import merged_saver
    cfg = Config({"device": "auto", "precision": "auto", "gradient_checkpointing": False, "dpo_method": method,
                  "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "method": method,
                  "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
                 _stage="06_instruction_tuning")
    cfg.model_from = lambda x: x         # a folder, no run
    ticks = _StepTimes()
    with Timer() as total:
        model, tok = dpo.load_policy(cfg, sft)
        enc, kept, _ = P.encode_pairs(tok, pairs, Template(), 256)
        pad = pad_id_of(tok)
        ref = dpo.pair_logps(model, enc, pad, 16, reference=True)
        stream = dpo.PairStream(enc, ref, args.batch_size, 1, 0, pad)
        losses = []

        def batch_at(step, micro, rank, world):
            ticks.tick()
            return stream.batch(step, micro, rank, world)
        fn = dpo.loss_fn(args.beta)

        def loss(modules, b):
            out = fn(modules, b)
            losses.append(float(out[0].detach()))
            return out
        spec = TrainSpec(steps=args.steps, lr=args.lr, schedule="constant", report_to="none", seed=0)
        with tempfile.TemporaryDirectory() as out:
            train([model], batch_at, loss, spec, out, eval_fn=lambda: ticks.tick() or {},
                  save_fn=merged_saver(cfg, model, tok, sft))
    ids = [(c.ids, r.ids) for c, r in enc]
    return {"total_seconds": total.seconds, "median_step_seconds": statistics.median(ticks.times[args.warmup:]),
            "first_loss": losses[0], "last_loss": losses[-1], "ids": ids, "n_pairs": len(kept),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run_trl(args, sft: str, pairs: list[dict], method: str, precompute: bool) -> dict:
    _threads(args.threads)
    import statistics

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lib.data.instructions import SYSTEM_PROMPT
    ticks = _StepTimes()
    losses = []

    class Cb(TrainerCallback):
        def on_step_begin(self, *a, **k):
            ticks.tick()

        def on_train_end(self, *a, **k):
            ticks.tick()

        def on_log(self, a, s, c, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
    sysmsg = [{"role": "system", "content": SYSTEM_PROMPT}]
    data = Dataset.from_list([{"prompt": sysmsg + [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    with tempfile.TemporaryDirectory() as out, Timer() as total:
        model = AutoModelForCausalLM.from_pretrained(sft)
        tok = AutoTokenizer.from_pretrained(sft)
        peft_config = None
        if method == "lora":
            from peft import LoraConfig
            peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        conf = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                         learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
                         precompute_ref_batch_size=16, max_length=256, report_to=[], save_strategy="no",
                         logging_steps=1, dataloader_num_workers=0, seed=0, disable_tqdm=True, bf16=False,
                         use_cpu=not __import__("torch").cuda.is_available(), dataset_num_proc=None)
        trainer = DPOTrainer(model=model, args=conf, train_dataset=data, processing_class=tok,
                             peft_config=peft_config, callbacks=[Cb()])
        trainer.train()
    ds = trainer.train_dataset
    ids = [(p + c, p + r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    return {"total_seconds": total.seconds, "median_step_seconds": statistics.median(ticks.times[args.warmup:]),
            "first_loss": losses[0], "last_loss": losses[-1], "ids": ids, "n_pairs": len(ds),
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="toy")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--trl-ref-forward", action="store_true", help="also trl without precomputed reference")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.methods = 5, 1, "full"
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("trl is not installed (it is not a dependency of this project): pip install trl")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sft, pairs = toy_inputs(args.run)
    rows, figures = [], {}
    for method in args.methods.split(","):
        variants = [(OURS, run_ours, (method,)), (TRL, run_trl, (method, True))]
        if args.trl_ref_forward:
            variants.append((TRL + " (reference forward each step)", run_trl, (method, False)))
        res = {}
        for name, fn, extra in variants:
            out, mem = isolated(fn, args, sft, pairs, *extra)
            res[name] = {**out, **mem}
        ours_ids = res[OURS]["ids"]
        for name, r in res.items():
            same = sum(a == b for a, b in zip(ours_ids, r.pop("ids")))
            rows.append({"method": method, "variant": name, "total_seconds": r["total_seconds"],
                         "median_step_seconds": r["median_step_seconds"],
                         "step_ratio_vs_ours": r["median_step_seconds"] / res[OURS]["median_step_seconds"],
                         "total_ratio_vs_ours": r["total_seconds"] / res[OURS]["total_seconds"],
                         "first_loss": r["first_loss"], "last_loss": r["last_loss"],
                         "same_ids_as_06": same / max(len(ours_ids), 1), "peak_rss_mb": r["peak_rss_mb"],
                         "trainable": r["trainable"]})
            figures[f"{method}/{name}"] = rows[-1]
    print(f"\n{len(pairs)} training pairs, {args.steps} steps x {args.batch_size} pairs, {args.threads} thread(s)\n")
    print(table(rows))
    emit("dpo_vs_trl", baseline=OURS, steps=args.steps, batch_size=args.batch_size, rows=figures)


if __name__ == "__main__":
    main()
