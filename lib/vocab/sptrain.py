"""Train SentencePiece models the way Llama's was trained (used for the toy tokenizers).

Identity normalisation and kept whitespace, as Llama: otherwise sentencepiece and transformers
disagree on repeated spaces. ``byte_fallback=True`` makes unseen characters fall apart into
``<0x..>`` byte pieces, exactly like Llama-2 does with Korean.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm


def train_sentencepiece(lines: Iterable[str], out_model: str | Path, vocab_size: int, *,
                        model_type: str = "bpe", byte_fallback: bool = True,
                        character_coverage: float = 1.0, seed_sentencepieces: int | None = None,
                        hard_vocab_limit: bool = True) -> Path:
    """Train a SentencePiece model on ``lines`` and write ``out_model`` (a ``.model`` file).

    Special ids follow Llama: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, no pad piece.
    """
    out_model = Path(out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    kwargs = dict(
        sentence_iterator=iter([ln for ln in lines if ln.strip()]),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=hard_vocab_limit,
        num_threads=2,
        minloglevel=2,
    )
    if seed_sentencepieces:
        kwargs["seed_sentencepiece_size"] = seed_sentencepieces
    spm.SentencePieceTrainer.train(**kwargs)
    tmp = out_model.with_suffix(".model.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out_model)
    return out_model
