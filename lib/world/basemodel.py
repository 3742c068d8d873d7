"""The tiny English-centric base model of the toy profile, and the two toy tokenizers.

Plays the part of Sheared-LLaMA + Llama-2 tokenizer + KoBERT tokenizer when nothing can be
downloaded (docs/DESIGN.md §5):
- ``base_tokenizer/tokenizer.model``: SentencePiece BPE with byte fallback trained on the English
  text (+ ~0.06% Korean, like Llama-2): Korean falls apart into UTF-8 bytes, ~2.5 tokens/char;
- ``korean_tokenizer/tokenizer.model``: SentencePiece unigram on the toy Korean text (KoBERT's role);
- ``model/``: a small ``LlamaForCausalLM`` (fp32, untied embeddings) pretrained from scratch on
  the English text until it answers the English toy questions; loads with
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` like a Hub model.

Usage (CPU, ~4 min for the default spec on 2 cores; ``BaseModelSpec.micro()`` takes seconds)::

    from lib.world.basemodel import BaseModelSpec, build_base_model
    metrics = build_base_model("outputs/toy/00_toy_world", "outputs/toy/00_toy_world", BaseModelSpec())
    metrics["base_en_accuracy"], metrics["base_ko_accuracy"]
"""
from __future__ import annotations

import math
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

from lib.core.params import dataclass_values
from lib.data.packing import check_packing, document_positions, qa_documents
from lib.modeling.mcscore import mc_accuracy
from lib.vocab.sptrain import train_sentencepiece
from lib.world.files import corpus_documents, file_lines, instruction_texts, lexicon_lines, tokenizer_corpus
from lib.world.world import CELLS

KOREAN_MODEL_TYPES = ("bpe", "unigram")
KOREAN_TEXT = ("data/ko_mono.txt", "data/stage3_ko.txt", "data/bridge_train.ko")


@dataclass(frozen=True)
class BaseModelSpec:
    """Tokenizer and model sizes and training schedule. Defaults reach >= 90% on the English
    knowledge questions (toy world), none of which is in the training text."""
    seed: int = 0
    base_vocab_size: int = 1900      # English BPE + 256 byte pieces + 3 specials: every toy English word one piece
    korean_vocab_size: int = 1500    # pieces of the Korean tokenizer (upper bound)
    korean_model_type: str = "bpe"   # bpe: every piece reachable after the merge (a unigram's often are not)
    ko_share: float = 0.0006         # Korean share of the base tokenizer's training characters
    joint_korean_share: float = 0.0  # share of Korean documents in base pretraining (0: English-centric;
                                     # > 0: the natively bilingual reference, tokenizer trained on both)
    character_coverage: float = 0.9995   # < 1: the few Korean characters stay byte-encoded
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 128               # packed block length
    packing: str = "concat"          # concat: documents see the ones before them in a block | documents: only
                                     # themselves (positions restart at BOS, BOS no target; lib.data.packing)
    batch_size: int = 8              # small batches: the facts are learned after ~700-900 updates
    steps: int = 1600                # English knowledge accuracy 0.84 at 1200 steps, 0.96 at 1600
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    max_position_embeddings: int = 2048  # later stages feed longer Korean (byte) sequences
    # torch threads while building; 0 keeps torch's default. 1 because these models are tiny:
    # on an idle 2-core machine 2 threads are only ~1.4x faster, but when other processes share
    # the cores, 2 OpenMP threads spin-wait and ran 10-16x SLOWER than 1 (measured, load 4-6).
    num_threads: int = 1

    @classmethod
    def micro(cls, **overrides) -> "BaseModelSpec":
        """For the micro world (``WorldSpec.micro()``): ~15 s on 2 cores, learns most English facts."""
        base = dict(base_vocab_size=1100, korean_vocab_size=800, hidden_size=64, intermediate_size=192,
                    num_layers=2, num_heads=2, steps=300, lr=5e-3, warmup_steps=20)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, values: dict) -> "BaseModelSpec":
        """A spec from a params section; unknown keys fail naming the key."""
        values = dataclass_values(cls, values)
        return cls(**values)

    def __post_init__(self):
        check_packing(self.packing)


def tokens_per_char(model_file: str | Path, lines: list[str]) -> float:
    """Tokens per character of ``lines`` with a SentencePiece model (no BOS/EOS counted)."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n_tokens = sum(len(ids) for ids in sp.encode(lines))
    return n_tokens / max(1, sum(len(line) for line in lines))


def train_base_tokenizer(world_dir: str | Path, out_dir: str | Path, vocab_size: int = 1024,
                         ko_share: float = 0.0006, character_coverage: float = 0.9995) -> dict:
    """Train the English-centric BPE tokenizer; writes ``<out_dir>/tokenizer.model``.

    Returns ``{"path", "ko_tokens_per_char", "en_tokens_per_char"}`` measured on data/sample.{ko,en}.
    """
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    path = train_sentencepiece(tokenizer_corpus(world_dir, ko_share), out_dir / "tokenizer.model",
                               vocab_size, model_type="bpe", byte_fallback=True,
                               character_coverage=character_coverage)
    return {"path": str(path),
            "ko_tokens_per_char": tokens_per_char(path, file_lines(world_dir / "data/sample.ko")),
            "en_tokens_per_char": tokens_per_char(path, file_lines(world_dir / "data/sample.en"))}


def korean_corpus(world_dir: str | Path) -> list[str]:
    """The toy Korean text (QA pairs joined for the tokenizer), the Korean instructions and the
    lexicon's Korean words (:func:`lib.world.files.lexicon_lines`)."""
    world_dir = Path(world_dir)
    lines = [line for rel in KOREAN_TEXT for line in file_lines(world_dir / rel)]
    return corpus_documents(lines) + instruction_texts(world_dir, "ko") + lexicon_lines(world_dir, "ko")


def train_korean_tokenizer(world_dir: str | Path, out_dir: str | Path, vocab_size: int = 1500,
                           model_type: str = "bpe") -> dict:
    """Train the Korean tokenizer (KoBERT's stand-in); writes ``<out_dir>/tokenizer.model``.

    BPE by default: its vocabulary holds every intermediate piece, so every piece stays reachable
    once 01 appends it to the base BPE (KoBERT is a unigram model and 15% of its pieces are not).
    The vocabulary may come out smaller than ``vocab_size`` when the toy Korean text is small.
    """
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    path = train_sentencepiece(korean_corpus(world_dir), out_dir / "tokenizer.model", vocab_size,
                               model_type=model_type, byte_fallback=False, hard_vocab_limit=False)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return {"path": str(path), "vocab_size": sp.get_piece_size(),
            "ko_tokens_per_char": tokens_per_char(path, file_lines(world_dir / "data/sample.ko"))}


def load_tokenizer(folder: str | Path) -> LlamaTokenizerFast:
    """A Llama tokenizer from a folder holding ``tokenizer.model`` (BOS added, as Llama)."""
    # transformers 5: AutoTokenizer on a bare tokenizer.model gives a generic backend, and
    # LlamaTokenizer(vocab_file=...) builds a 3-token vocab; from_pretrained on the class is right.
    return LlamaTokenizerFast.from_pretrained(str(folder), add_bos_token=True)


def pretrain_documents(lines: list[str]) -> list[str]:
    """Documents of en_pretrain.txt: one per line, except that a Question line and its Answer
    line form one document (the MC prompt format, newline included): :func:`lib.data.packing.qa_documents`."""
    return qa_documents(lines)


def encode_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    """``<s> doc </s>`` token ids per document."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(docs)["input_ids"]]


def packed_blocks(docs: list[list[int]], seq_len: int, rng: random.Random) -> torch.Tensor:
    """One epoch: documents shuffled, concatenated and cut into ``seq_len`` blocks (tail dropped)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    stream = [t for i in order for t in docs[i]]
    n = len(stream) // seq_len
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)


def lm_batch(blocks: torch.Tensor, packing: str, bos_token_id: int) -> dict:
    """The model's inputs for packed ``blocks``: every token a target (``concat``), or, with
    ``documents``, position ids restarting at each BOS, no attention mask (transformers then masks
    each document off from the others) and no loss on BOS (predicted across a boundary).
    ``use_cache=False`` matters there: with a key/value cache transformers skips that masking."""
    if packing == "concat":
        return {"input_ids": blocks, "labels": blocks}
    labels = blocks.masked_fill(blocks == bos_token_id, -100)
    return {"input_ids": blocks, "position_ids": document_positions(blocks, bos_token_id), "labels": labels,
            "use_cache": False}


def lr_at(step: int, spec: BaseModelSpec) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``: the multiplier of ``spec.lr``."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def llama_config(spec: BaseModelSpec, vocab_size: int) -> LlamaConfig:
    """The tiny Llama's config (``plan`` sizes it from 00's parameters before 00 has run)."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=spec.hidden_size,
                       intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                       num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
                       max_position_embeddings=spec.max_position_embeddings, bos_token_id=1,
                       eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)


def new_model(spec: BaseModelSpec, vocab_size: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (seeded by the caller)."""
    return LlamaForCausalLM(llama_config(spec, vocab_size)).float()


def pretrain(model, docs: list[list[int]], spec: BaseModelSpec, progress: bool = True,
             callback=None) -> dict:
    """Causal-LM pretraining on packed documents; returns ``{"loss_curve", "final_loss", "train_seconds",
    "tokens_per_second", "tokens"}`` (final_loss: mean of the last 20 steps).

    ``callback(step, model)``, if given, runs after every optimiser step (e.g. periodic evaluation);
    its time counts in train_seconds.
    """
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # norms: no weight decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec))
    rng = random.Random(spec.seed)
    blocks = packed_blocks(docs, spec.seq_len, rng)
    if len(blocks) == 0:
        raise ValueError(f"corpus has fewer tokens than one block of seq_len={spec.seq_len}")
    cursor, curve = 0, []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(spec.steps), desc="pretrain", disable=not progress)
    for step in bar:
        if cursor + spec.batch_size > len(blocks):  # next epoch, new shuffle
            blocks, cursor = packed_blocks(docs, spec.seq_len, rng), 0
        batch = blocks[cursor:cursor + spec.batch_size]
        cursor += spec.batch_size
        loss = model(**lm_batch(batch, spec.packing, model.config.bos_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if callback is not None:
            callback(step, model)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{curve[-1]:.3f}", tok_s=f"{(step + 1) * batch.numel() / elapsed:,.0f}")
    seconds = time.perf_counter() - start
    model.eval()
    tokens = spec.steps * spec.batch_size * spec.seq_len
    tail = curve[-20:]
    return {"loss_curve": curve, "final_loss": sum(tail) / len(tail), "train_seconds": seconds,
            "tokens_per_second": tokens / seconds, "tokens": tokens}


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older one is removed only after the new one is complete."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_model(model, tokenizer, tokenizer_model: str | Path, out: str | Path) -> Path:
    """Write a Hub-style folder (weights, config, tokenizer files and ``tokenizer.model``) atomically."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")  # save_pretrained does not write it
    replace_dir(tmp, out)
    return out


def build_base_model(world_dir: str | Path, out_dir: str | Path, spec: BaseModelSpec | None = None,
                     progress: bool = True) -> dict:
    """Train both tokenizers and the base model, evaluate it on every question cell, save it.

    Writes ``<out_dir>/base_tokenizer/``, ``<out_dir>/korean_tokenizer/`` and ``<out_dir>/model/``.
    Returns metrics: base_en_accuracy, base_ko_accuracy (the knowledge cell; + ``_norm``
    variants), ``cells`` (every cell's accuracies), train_seconds,
    tokens_per_second, ko/en_tokens_per_char (base tokenizer), korean_tokenizer_ko_tokens_per_char,
    n_params, final_loss (mean of the last 20 steps), loss_curve (one loss per step),
    pretrain_documents, pretrain_tokens_per_epoch, the vocab sizes and the spec.
    """
    spec = spec or BaseModelSpec()
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    with torch_threads(spec.num_threads):
        return _build(world_dir, out_dir, spec, progress)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads (0: unchanged) and restore the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def joint_documents(world_dir: Path, en_docs: list[str], share: float) -> list[str]:
    """English documents plus Korean ones (ko_mono.txt, cycled) making ``share`` of all documents."""
    if share <= 0:
        return en_docs
    if share >= 1:
        raise ValueError(f"joint_korean_share must be in [0, 1), got {share}")
    ko_docs = qa_documents(file_lines(world_dir / "data/ko_mono.txt"))
    n_ko = round(share / (1 - share) * len(en_docs))
    return en_docs + [ko_docs[i % len(ko_docs)] for i in range(n_ko)]


def cell_accuracies(model, tokenizer, world_dir: Path, batch_size: int) -> dict[str, dict[str, float]]:
    """acc (and acc_norm) of every question cell in both languages: ``{cell: {en, ko, en_norm, ko_norm, n}}``."""
    out = {}
    for cell in CELLS:
        row = {}
        for lang in ("en", "ko"):
            res = mc_accuracy(model, tokenizer, world_dir / f"eval/{cell}_{lang}.jsonl", lang, batch_size)
            row[lang], row[f"{lang}_norm"], row["n"] = res["acc"], res["acc_norm"], res["n"]
        out[cell] = row
    return out


def _build(world_dir: Path, out_dir: Path, spec: BaseModelSpec, progress: bool) -> dict:
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    joint = spec.joint_korean_share > 0
    base_tok = train_base_tokenizer(world_dir, out_dir / "base_tokenizer", spec.base_vocab_size,
                                    spec.joint_korean_share if joint else spec.ko_share,
                                    1.0 if joint else spec.character_coverage)
    ko_tok = train_korean_tokenizer(world_dir, out_dir / "korean_tokenizer", spec.korean_vocab_size,
                                    spec.korean_model_type)
    tokenizer = load_tokenizer(out_dir / "base_tokenizer")
    texts = joint_documents(world_dir, pretrain_documents(file_lines(world_dir / "data/en_pretrain.txt")),
                            spec.joint_korean_share)
    docs = encode_documents(tokenizer, texts)
    model = new_model(spec, len(tokenizer))
    train = pretrain(model, docs, spec, progress)
    cells = cell_accuracies(model, tokenizer, world_dir, spec.eval_batch_size)
    save_model(model, tokenizer, base_tok["path"], out_dir / "model")
    know = cells["knowledge"]
    return {
        "base_en_accuracy": know["en"], "base_ko_accuracy": know["ko"],
        "base_en_accuracy_norm": know["en_norm"], "base_ko_accuracy_norm": know["ko_norm"],
        "n_questions": know["n"], "cells": cells,
        "ko_tokens_per_char": base_tok["ko_tokens_per_char"], "en_tokens_per_char": base_tok["en_tokens_per_char"],
        "korean_tokenizer_ko_tokens_per_char": ko_tok["ko_tokens_per_char"],
        "korean_vocab_size": ko_tok["vocab_size"], "base_vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
        "pretrain_documents": len(docs), "pretrain_tokens_per_epoch": sum(len(d) for d in docs),
        **{k: train[k] for k in ("train_seconds", "tokens_per_second", "tokens", "final_loss", "loss_curve")},
        "spec": asdict(spec),
    }
