"""Shared fixtures: tiny tokenizers and a tiny random Llama built locally (never downloaded)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib.core import paths

EN_LINES = [f"The {a} {v} the {o} near the {p} on day {i}."
            for i, (a, v, o, p) in enumerate(
                (a, v, o, p) for a in ("cat", "dog", "farmer", "teacher", "child")
                for v in ("sees", "likes", "finds", "paints") for o in ("apple", "river", "house")
                for p in ("school", "market"))]
KO_LINES = [f"{a} {o}{j} {v} {p}에서 {i}일에."
            for i, (a, o, j, v, p) in enumerate(
                (a, o, j, v, p) for a in ("고양이가", "개가", "농부가", "선생님이", "아이가")
                for (o, j) in (("사과", "를"), ("강", "을"), ("집", "을"))
                for v in ("본다", "좋아한다", "찾는다") for p in ("학교", "시장"))]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not paths.SHARED_DATA.exists():
        pytest.skip("../shared/data is absent")
    return paths.SHARED_DATA


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """An English-centric byte-fallback BPE, a Korean unigram model, a tiny random Llama
    using the first, and Korean/English sample files. Built in ~2 s."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lib.vocab.sptrain import train_sentencepiece
    root = tmp_path_factory.mktemp("tiny")
    base_sp = train_sentencepiece(EN_LINES + KO_LINES[:2], root / "base_sp" / "tokenizer.model", 330,
                                  hard_vocab_limit=False)
    ko_sp = train_sentencepiece(KO_LINES, root / "ko_sp" / "tokenizer.model", 80, model_type="unigram",
                                byte_fallback=False, hard_vocab_limit=False)
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model
    # not AutoTokenizer on a bare tokenizer.model: it builds a generic tokenizer without the
    # leading "▁" that disagrees with SentencePiece (see lib.vocab.merge)
    tok = hf_tokenizer_from_sp(load_sp_model(base_sp))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    shutil.copy(base_sp, model_dir / "tokenizer.model")
    (root / "sample.en").write_text("\n".join(EN_LINES[::3]) + "\n", encoding="utf-8")
    (root / "sample.ko").write_text("\n".join(KO_LINES[::3]) + "\n", encoding="utf-8")
    return {"root": root, "base_sp": base_sp, "ko_sp": ko_sp, "model": model_dir,
            "sample_en": root / "sample.en", "sample_ko": root / "sample.ko"}


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """An empty outputs/ folder for runs and grids (lib.core.paths.OUTPUTS points at it)."""
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setattr(paths, "OUTPUTS", out)
    return out
