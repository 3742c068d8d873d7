"""Stage 1 (``03_stage1_contrastive``): pull each Korean sentence onto its English translation.

Symmetric InfoNCE with in-batch negatives on Ko-En parallel pairs: the sentence vector of a Korean
line (a pooled hidden state, see :mod:`lib.modeling.represent`) must pick out its own English translation
among the other English lines of the batch, and the other way round. Trained: input embeddings and
the transformer layers (and the learned layer weights when ``layer_range`` is given); the LM head is
frozen (a tied head is untied first, see :func:`freeze_for_stage1`), so stage 2 starts from the
output layer the base model had. ``clm_weight > 0`` adds a causal-LM loss on Korean text.

Run it (the notebook and the CLI call the same :func:`run`)::

    notebooks/03_stage1_contrastive.ipynb               # JupyterLab, or the pipeline via Papermill
    python -m lib.train 03 params/toy.yaml              # toy world: ~30 s of training on 2 CPU cores
    accelerate launch --config_file params/accelerate/ddp.yaml -m lib.train 03 params/a6000.yaml

Output in ``<run>/03_stage1_contrastive/``: ``checkpoints/step-NNNNNN/`` (every ``save_every``),
``model/`` (the last checkpoint: what 04 loads), ``layer_weights.json`` (with ``layer_range``),
and the metrics :func:`run` returns (retrieval P@1, pair / non-pair cosine before and after, curves).

Distributed: every rank takes rows ``r::w`` of the global batch and uses only its own rows as
negatives (no cross-device gather), so the contrastive batch per device is ``batch_size / w``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from accelerate import PartialState

from lib.core.io import write_json
from lib.core.plots import grouped_bars, line_curve, save
from lib.core.readers import DataError, read_parallel
from lib.data.corpus import parse_corpus
from lib.data.packing import MixedStream, pack_file, stream_stats
from lib.data.wordpairs import Locator, read_pairs
from lib.modeling.chunked_ce import DEFAULT_CHUNK_TOKENS, mean_nll, token_nll
from lib.modeling.model import AUTOCAST_DTYPES, precision_settings
from lib.modeling.represent import (
    POOLING_MODES,
    LayerWeights,
    alignment_report,
    embed_texts,
    hidden_states_of,
    pooled_vectors,
    sentence_vectors,
)
from lib.train import align_terms as AT
from lib.train.align_terms import batch_spans, check_knobs, head_alignment_loss, word_vectors
from lib.train.common import final_model, load_start, precision_of, saver, train_spec, trainable_summary
from lib.train.head import base_vocab_size
from lib.train.loop import train
from lib.train.pairs import PairBatches, encode_texts, pair_lengths, rows_of, stack_batches

STAGE = "03_stage1_contrastive"
ENGLISH_ENCODERS = ("shared", "frozen")


# ----------------------------------------------------------------------------- model

class ScaledLayerWeights(LayerWeights):
    """:class:`LayerWeights` whose logits learn ``scale`` times faster than the model.

    The loop has one optimizer and one lr, tuned for the model (~1e-4): Adam moves every raw number
    by ~lr a step, which would leave a handful of softmax logits where they started. The effective logits are
    ``scale * raw`` with the gradient to ``raw`` divided by ``scale``, so Adam moves them ~scale*lr a
    step while their gradient stays too small to dominate the global grad-norm clip.
    """

    def __init__(self, first: int, last: int, scale: float = 1.0):
        super().__init__(first, last)
        self.scale = float(scale)

    def weights(self) -> torch.Tensor:
        raw = self.logits
        return torch.softmax(raw.detach() * self.scale + (raw - raw.detach()) / self.scale, dim=0)

    def to_json(self) -> dict:
        return {"layers": list(range(self.first, self.last + 1)), "weights": self.weights().tolist(),
                "logits": (self.logits.detach() * self.scale).tolist()}


class Encoder(torch.nn.Module):
    """The causal LM + optional layer weights as *one* module whose forward returns the sentence
    vectors of a batch and, given CLM blocks, their causal-LM loss: DDP then sees one forward per
    backward and synchronises the layer weights with the model."""

    def __init__(self, lm, choice: dict, pooling: str, layer_weights: LayerWeights | None = None,
                 layers: list[int] | None = None, head_ids: tuple | None = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        super().__init__()
        self.lm, self.layer_weights, self.choice, self.pooling = lm, layer_weights, choice, pooling
        self.layers, self.head_ids = layers, head_ids      # the grid's knobs (lib.train.align_terms)
        self.chunk_tokens = chunk_tokens                   # the CLM term's chunked cross-entropy

    def forward(self, batch: dict, clm: dict | None = None, words: torch.Tensor | None = None):
        """``(vecs, clm_loss, extra)``: the representation's vectors, the CLM loss (or None), and
        the knobs' inputs: ``layer_vecs`` (one [B, d] per layer of ``layers``), ``words`` (one
        (ko, en) pair of word-vector sets per layer, for the batch's word rows), ``head``."""
        # two passes, not one padded batch: CLM blocks are ~3x longer than sentences, and only
        # they need logits (hidden_states_of keeps the logits of one position)
        hs = hidden_states_of(self.lm, batch)
        mask = batch["attention_mask"]
        vecs = pooled_vectors(hs, mask, layer_weights=self.layer_weights, pooling=self.pooling, **self.choice)
        extra = {}
        layers = self.layers or [self.choice.get("layer", len(hs) - 1)]
        if self.layers:
            extra["layer_vecs"] = [pooled_vectors(hs, mask, layer=i, pooling=self.pooling) for i in layers]
        if words is not None and len(words):
            extra["words"] = [word_vectors(hs[i], words, mask.shape[0] // 2) for i in layers]
        if self.head_ids is not None:
            extra["head"] = head_alignment_loss(self.lm.get_output_embeddings().weight, *self.head_ids)
        if clm is None:
            return vecs, None, extra
        nll, valid = token_nll(self.lm, clm, self.chunk_tokens, grad_in_forward=True)      # no full logits
        return vecs, mean_nll(nll, valid), extra


def layer_choice(cfg: Any, n_states: int) -> tuple[dict, tuple[int, int] | None]:
    """``({"layer": i}, None)`` or ``({}, (a, b))`` for learned weights over a..b (absolute indices)."""
    def absolute(i: int) -> int:
        j = i + n_states if i < 0 else i
        if not 0 <= j < n_states:
            raise ValueError(f"layer {i} is out of range: the model has {n_states} hidden states "
                             f"(0 = embeddings .. {n_states - 1} = last layer, or negative from the end)")
        return j
    rng = list(cfg.layer_range)
    if not rng:
        return {"layer": absolute(cfg.layer)}, None
    if len(rng) != 2:
        raise ValueError(f"layer_range must be [] or two layer indices [a, b], got {rng}")
    a, b = absolute(rng[0]), absolute(rng[1])
    if a > b:
        raise ValueError(f"layer_range {rng} is empty: its first layer comes after its last")
    return {}, (a, b)


@torch.no_grad()
def freeze_for_stage1(model, top: int, keep_all: bool) -> dict:
    """Freeze the LM head; train embeddings and layers. Returns what was done (for metrics.json).

    A tied head *is* the embedding matrix, so freezing one would freeze the other: we untie it, the
    head becoming a frozen copy of the starting embeddings (saved as an untied checkpoint; 04 trains
    it). Layers above hidden state ``top`` (and the final norm unless ``top`` is the last state) get
    no gradient from InfoNCE; unless a CLM loss (``keep_all``) reaches them they are frozen too, so
    the counts are honest and DDP finds no unused parameter.
    """
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to freeze")
    tied = head.weight is emb.weight
    if tied:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
    for p in model.parameters():
        p.requires_grad = True
    head.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    frozen_above = []
    if not keep_all:
        for i, block in enumerate(model.model.layers):
            if i >= top:                      # hidden state i + 1 is block i's output
                block.requires_grad_(False)
                frozen_above.append(i)
        if top < n_layers:
            model.model.norm.requires_grad_(False)
    return {"head_was_tied": tied,
            "head": "untied: the head is a frozen copy of the starting embeddings" if tied else "frozen",
            "layers_frozen_above_representation": frozen_above}


# ----------------------------------------------------------------------------- the stage

@dataclass
class Stage1:
    """Everything :func:`run` trains and evaluates, built from the config by :func:`build`."""
    cfg: Any
    model: Any
    tok: Any
    init_from: str
    encoder: Encoder
    english: Any                      # the model that encodes English: ``model`` or a frozen copy
    english_choice: dict              # how English vectors are pooled (fixed layers when frozen)
    pairs: PairBatches
    train_enc: dict
    heldout: tuple[list[str], list[str]]
    clm: Any                          # a MixedStream over packed Korean blocks, or None
    info: dict
    words: list | None = None         # per training pair, its aligned word rows (objective word/both)

    def choice(self) -> dict:
        lw = self.encoder.layer_weights
        return {"layer_weights": lw} if lw is not None else dict(self.encoder.choice)


def check_config(cfg: Any) -> None:
    if cfg.pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {cfg.pooling!r}")
    if cfg.english_encoder not in ENGLISH_ENCODERS:
        raise ValueError(f"english_encoder must be one of {ENGLISH_ENCODERS}, got {cfg.english_encoder!r}")
    if not (cfg.temperature > 0 and cfg.lr > 0 and cfg.layer_weights_lr > 0 and cfg.clm_weight >= 0):
        raise ValueError("need temperature, lr and layer_weights_lr > 0 and clm_weight >= 0; got "
                         f"{cfg.temperature}, {cfg.lr}, {cfg.layer_weights_lr}, {cfg.clm_weight}")
    if cfg.eval_pairs == 1:
        raise ValueError("eval_pairs must be 0 (all) or >= 2: non-pair cosine needs two pairs")
    if cfg.group_by_length < 0:
        raise ValueError(f"group_by_length must be >= 0 (0: off), got {cfg.group_by_length}")
    check_knobs(cfg)


def build(cfg: Any) -> Stage1:
    """Load the starting model, freeze the head, read and encode the pairs (and the CLM blocks)."""
    check_config(cfg)
    ko, en = read_parallel(cfg.path(cfg.pairs_ko), cfg.path(cfg.pairs_en), limit=cfg.max_pairs or None)
    held_ko, held_en = read_parallel(cfg.path(cfg.heldout_ko), cfg.path(cfg.heldout_en),
                                     limit=cfg.eval_pairs or None)
    if len(held_ko) < 2:
        raise DataError(f"{cfg.heldout_ko}: evaluation needs at least 2 held-out pairs")
    model, tok, folder = load_start(cfg)
    if cfg.get("gradient_checkpointing"):      # each layer recomputed in the backward: ~1/10 the activations
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    n_states = model.config.num_hidden_layers + 1
    choice, rng = layer_choice(cfg, n_states)
    layers = AT.layer_list(cfg.get("layers", "representation"), n_states)
    top = max([rng[1] if rng else choice["layer"]] + (layers or []))
    lw = ScaledLayerWeights(*rng, scale=cfg.layer_weights_lr / cfg.lr) if rng else None
    if lw is not None:
        lw.to(model.device)
    frozen = None
    if cfg.english_encoder == "frozen":
        # copied before anything is untied or frozen: exactly the starting model
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        # it only ever runs under the training autocast, which computes its matmuls in that dtype
        # anyway: keep it there (half the memory: 2.7 GB instead of 5.5 GB at 1.3B)
        _, mixed = precision_settings(cfg.get("precision", "auto"), model.device)
        if AUTOCAST_DTYPES[mixed] is not None:
            frozen.to(AUTOCAST_DTYPES[mixed])
    info = freeze_for_stage1(model, top, keep_all=cfg.clm_weight > 0)
    objective = cfg.get("objective", "sentence")
    word_pairs = None
    if objective != "sentence" or cfg.get("align_head"):
        word_pairs = read_pairs(cfg.path(cfg.word_pairs))
    head_ids = None
    if cfg.get("align_head"):
        try:
            n_base = base_vocab_size(cfg)
        except FileNotFoundError:
            n_base = None                     # no 01 in this run: every Korean token unlike its English one
        head_ids = AT.head_pairs(tok, word_pairs, n_base)
        head = model.get_output_embeddings().weight
        head.requires_grad_(True)
        AT.only_rows(head, head_ids[0])
        info["align_head"] = {"rows": len(head_ids[0]), "base_vocab_size": n_base}
    info["objective"], info["layers"] = objective, layers or "representation"
    clm = None
    if cfg.clm_weight > 0:
        blocks, report = pack_file(tok, parse_corpus(cfg.clm_text, cfg.run_dir), cfg.clm_block)
        clm = MixedStream({"ko": blocks}, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                          seed=cfg.seed, bos_token_id=tok.bos_token_id)
        info["clm_text"] = report
    enc = {"ko": encode_texts(tok, ko, cfg.max_len), "en": encode_texts(tok, en, cfg.max_len)}
    words = None
    if objective != "sentence":
        words = AT.word_spans(tok, ko, en, cfg.max_len, Locator(word_pairs))
        info["word_spans"] = AT.span_stats(words)
        if not info["word_spans"]["word_occurrences"]:
            raise DataError(f"{cfg.word_pairs}: none of its words occurs in the training pairs "
                            f"({cfg.pairs_ko}); objective {objective!r} has nothing to align")
    return Stage1(
        cfg=cfg, model=model, tok=tok, init_from=str(folder),
        encoder=Encoder(model, choice, cfg.pooling, lw, layers, head_ids, cfg.loss_chunk_tokens),
        english=frozen if frozen is not None else model,
        # a frozen English side must stay put: fixed (uniform) layers, never the learned weights
        english_choice=(choice if not rng else {"layer_range": rng}) if frozen is not None else {},
        pairs=PairBatches(len(ko), cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.group_by_length,
                          lengths=pair_lengths(enc)),
        train_enc=enc,
        heldout=(held_ko, held_en), clm=clm, info=info, words=words)


def batch_fn(s: Stage1):
    def batch_at(step: int, micro: int, rank: int, world: int) -> dict:
        idx = s.pairs.indices(step, micro, rank, world)
        batch = {"ko": rows_of(s.train_enc["ko"], idx), "en": rows_of(s.train_enc["en"], idx)}
        if s.words is not None:
            batch["words"] = batch_spans(s.words, idx)
        if s.clm is not None:
            b = s.clm.batch(step, micro, rank, world)
            batch["clm"] = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
        return batch
    return batch_at


def loss_fn(s: Stage1):
    cfg, frozen = s.cfg, s.english if s.english is not s.model else None

    def compute(modules, batch):
        enc = modules[0]                                  # the prepared (maybe DDP-wrapped) Encoder
        dev = next(enc.parameters()).device
        to = lambda b: {k: v.to(dev) for k, v in b.items()}  # noqa: E731
        pairs = batch["ko"] if frozen is not None else stack_batches([batch["ko"], batch["en"]])
        words = batch["words"].to(dev) if "words" in batch else None
        vecs, clm, extra = enc(to(pairs), to(batch["clm"]) if "clm" in batch else None, words)
        n = batch["ko"]["input_ids"].shape[0]
        if frozen is not None:
            if next(frozen.parameters()).device != dev:
                frozen.to(dev)
            with torch.no_grad():
                en = sentence_vectors(frozen, to(batch["en"]), pooling=cfg.pooling, **s.english_choice)
        else:
            en = vecs[n:]
        loss, logs = AT.alignment_loss(cfg, vecs[:n], en, extra, words)
        if clm is not None:
            logs["clm"] = clm.item()
            return loss + cfg.clm_weight * clm, logs
        return loss, logs
    return compute



def evaluate(s: Stage1) -> dict:
    """Alignment of the held-out pairs at the trained representation (the learned mix if any)."""
    ko_texts, en_texts = s.heldout
    kw = dict(pooling=s.cfg.pooling, batch_size=s.cfg.batch_size, max_len=s.cfg.max_len)
    ko = embed_texts(s.model, s.tok, ko_texts, **s.choice(), **kw)
    en = embed_texts(s.english, s.tok, en_texts, **(s.english_choice or s.choice()), **kw)
    r = alignment_report(ko, en)
    r["p1"] = (r["p1_ko2en"] + r["p1_en2ko"]) / 2
    if s.encoder.layer_weights is not None:
        r["layer_weights"] = s.encoder.layer_weights.weights().tolist()
    return r


def save_fn(s: Stage1):
    save_model = saver(s.model, s.tok, s.init_from)

    def save(folder: Path) -> None:
        save_model(folder)
        if s.encoder.layer_weights is not None:   # next to the model: 07/08 read the same mix
            write_json(Path(folder) / "layer_weights.json", s.encoder.layer_weights.to_json())
    return save


def run(cfg: Any, stop_at: int | None = None) -> dict:
    """Train stage 1 (resuming from ``<stage>/checkpoints`` if any) and return its metrics."""
    s = build(cfg)
    tokens = lambda b: sum(int(p["attention_mask"].sum()) for p in b.values() if isinstance(p, dict))  # noqa: E731
    result = train([s.encoder], batch_fn(s), loss_fn(s), train_spec(cfg), cfg.stage_dir,
                   eval_fn=lambda: evaluate(s), save_fn=save_fn(s), tokens_in=tokens, stop_at=stop_at,
                   desc="stage1 contrastive")
    metrics = summarise(s, result)
    final_model(cfg, result)                  # the main process copies, every process waits
    if PartialState().is_main_process:
        if "layer_weights" in metrics:
            write_json(cfg.stage_dir / "layer_weights.json", metrics["layer_weights"])
    PartialState().wait_for_everyone()
    return metrics


def summarise(s: Stage1, result: dict) -> dict:
    cfg, evals = s.cfg, result["evals"]
    first, last = evals[0]["eval"], evals[-1]["eval"]
    ba = lambda k: {"before": first[k], "after": last[k]}  # noqa: E731
    resumed = int(Path(result["resumed_from"]).name.split("-")[1]) if result["resumed_from"] else 0
    run_steps = cfg.steps - resumed
    metrics = {
        "init_from": s.init_from, "english_encoder": cfg.english_encoder, "pooling": cfg.pooling,
        "representation": {"layer": cfg.layer} if not cfg.layer_range else {"layer_range": cfg.layer_range},
        "retrieval_p1": ba("p1"), "retrieval_p1_ko2en": ba("p1_ko2en"), "retrieval_p1_en2ko": ba("p1_en2ko"),
        "pair_cos": ba("pair_cos"), "nonpair_cos": ba("nonpair_cos"), "gap": ba("gap"),
        "curves": {"loss": [h for h in result["history"] if "loss" in h],
                   "eval": [{"step": e["step"], **e["eval"]} for e in evals]},
        "checkpoints": result["checkpoints"], "model": str(cfg.stage_dir / "model"), "precision": precision_of(cfg),
        "train_seconds": result["train_seconds"], "resumed_from": result["resumed_from"],
        "pairs_per_second": (run_steps * cfg.batch_size * cfg.grad_accum / result["train_seconds"]
                             if result["train_seconds"] else None),
        "tokens_per_second": result["tokens_per_second"],
        "train_pairs": s.pairs.n, "heldout_pairs": len(s.heldout[0]),
        "pair_epochs": s.pairs.epochs(cfg.steps), "group_by_length": cfg.group_by_length,
        "pad_share": pad_share(s, min(cfg.steps, 50)),
        **trainable_summary(s.encoder), **s.info,
    }
    if s.clm is not None:
        metrics["clm_stream"] = stream_stats(s.clm, cfg.steps)
    if s.encoder.layer_weights is not None:
        metrics["layer_weights"] = layer_weights_history(s, result)
    return metrics


def pad_share(s: Stage1, steps: int) -> float:
    """Share of padded positions in the Korean and English batches of the first ``steps`` steps."""
    lengths = {lang: s.train_enc[lang]["attention_mask"].sum(1).numpy() for lang in ("ko", "en")}
    real = padded = 0
    for step in range(steps):
        for micro in range(s.pairs.grad_accum):
            idx = s.pairs.indices(step, micro)
            for n in lengths.values():
                real, padded = real + int(n[idx].sum()), padded + int(n[idx].max()) * len(idx)
    return 1 - real / max(padded, 1)


def layer_weights_history(s: Stage1, result: dict) -> dict:
    """The softmax weights at the start and at every kept checkpoint (read back from disk)."""
    lw = s.encoder.layer_weights
    layers = list(range(lw.first, lw.last + 1))
    per_ckpt = {Path(c).name: json.loads((Path(c) / "model" / "layer_weights.json").read_text())["weights"]
                for c in result["checkpoints"]}
    return {"layers": layers, "start": [1 / len(layers)] * len(layers), "checkpoints": per_ckpt,
            "final": lw.weights().tolist()}


# ----------------------------------------------------------------------------- figures

def plot_loss(metrics: dict, path=None):
    rows = metrics["curves"]["loss"]
    return line_curve([r["step"] for r in rows], [r["loss"] for r in rows], "Stage 1 training loss",
                      "step", "loss (InfoNCE + clm_weight * CLM)", path)


def plot_alignment(metrics: dict, path=None):
    """Held-out P@1 (both directions) and pair / non-pair cosine against the step."""
    rows = metrics["curves"]["eval"]
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("p1_ko2en", "Ko→En"), ("p1_en2ko", "En→Ko"), ("p1", "mean")):
        a.plot(steps, [r[key] for r in rows], marker="o", label=label)
    a.set(title="Held-out retrieval P@1", xlabel="step", ylabel="P@1", ylim=(0, 1.02))
    for key, label in (("pair_cos", "pairs"), ("nonpair_cos", "non-pairs"), ("gap", "gap")):
        b.plot(steps, [r[key] for r in rows], marker="o", label=label)
    b.set(title="Held-out cosine", xlabel="step", ylabel="cosine")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def plot_layer_weights(metrics: dict, path=None):
    lw = metrics["layer_weights"]
    series = {"start": lw["start"], **{f"step {int(k.split('-')[1])}": v for k, v in lw["checkpoints"].items()}}
    return grouped_bars([str(i) for i in lw["layers"]], series, "Learned layer weights (softmax)",
                        "weight", path)
