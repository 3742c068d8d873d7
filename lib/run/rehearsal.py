"""Stand-in models for the real-shape rehearsal (``params/rehearsal.yaml``): the a6000 profile's
code path on a CPU, with tiny *randomly initialised* models built locally (nothing downloaded).

    python -m lib.cli.rehearsal outputs/rehearsal/assets       # build the two models (~10 s)
    python -m lib.pipeline run params/rehearsal.yaml       # then run 01-08 on ../shared/data

- ``llama/``: a 2-layer Llama (``LlamaConfig``) saved with the real Llama-2 tokenizer
  (32,000 pieces, ``../shared/data/tokenizers/llama2``): Sheared-LLaMA's vocabulary, so 01 merges
  the real 39,478-piece union and every embedding, logit and packing shape has the real width.
- ``neox/``: a 2-layer GPT-NeoX with its own byte-level BPE trained here on Korean and English
  text: another architecture and another tokenizer, standing in for polyglot-ko-1.3b in 07/08.

The rehearsal proves plumbing, not quality: the models are random, their scores are chance.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lib.core import paths
from lib.core.io import atomic_dir

LLAMA = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
NEOX = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=4096, tie_word_embeddings=False)
NEOX_VOCAB = 2000
NEOX_TEXT = ("mono/ko/klue_sentences.txt", "mono/en/mlqa_contexts.txt")


def build_llama(dest: Path, shared: Path, seed: int = 0) -> Path:
    """A tiny random Llama saved with the real Llama-2 tokenizer (and its ``tokenizer.model``)."""
    import torch  # torch + transformers: ~2.5 s to import; only when the models are built
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast  # see torch above
    sp = shared / "tokenizers" / "llama2" / "tokenizer.model"
    if not sp.is_file():
        raise FileNotFoundError(f"{sp}: the Llama-2 tokenizer is missing (see ../shared/data/README.md)")
    tok = LlamaTokenizerFast.from_pretrained(str(sp), add_bos_token=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **LLAMA))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    shutil.copy(sp, dest / "tokenizer.model")
    return dest


def build_neox(dest: Path, shared: Path, seed: int = 0) -> Path:
    """A tiny random GPT-NeoX with a byte-level BPE of its own (no SentencePiece, no BOS)."""
    import torch  # torch + transformers: ~2.5 s to import; only when the models are built
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast  # see torch above
    files = [shared / f for f in NEOX_TEXT]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: needed to train the stand-in GPT-NeoX tokenizer")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(f) for f in files], trainers.BpeTrainer(
        vocab_size=NEOX_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), bos_token_id=eot, eos_token_id=eot, **NEOX))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def build_assets(dest: str | Path, shared: str | Path = paths.SHARED_DATA, overwrite: bool = False) -> Path:
    """``dest/llama`` and ``dest/neox`` (each written to a temp folder and renamed)."""
    dest, shared = Path(dest), Path(shared)
    for name, build in (("llama", build_llama), ("neox", build_neox)):
        if (dest / name / "config.json").exists() and not overwrite:
            continue
        with atomic_dir(dest / name, overwrite=True) as tmp:
            build(Path(tmp), shared)
    return dest
