"""Shared fixtures: tiny tokenizers and a tiny random Llama built locally (never downloaded)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib.core import paths

# The longest test modules, longest first (seconds on 2 cores, one worker each, `make test`): they
# are collected first so that `pytest -n 2 --dist loadfile` starts them at once on both workers
# instead of leaving one of them for the end. Order only; every module still runs.
SLOW_FIRST = ("test_rehearsal.py",        # 01-08 on the real tokenizers (~150-270 s)
              "test_micro_pipeline.py",   # 00-08 on micro, then 03-07 under bf16-mixed (~180 s)
              "test_gridseeds.py",        # a micro grid with two seeds (~120 s)
              "test_grid.py",             # a micro grid of three conditions (~90 s)
              "test_bench.py", "test_plan.py", "test_gpu_check.py", "test_distributed.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable: the rest as collected


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


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate's process-wide state reset after the test (a test module opts in with
    ``pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")``)."""
    from accelerate.state import AcceleratorState, GradientState
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run ~10x faster on one thread when the 2 cores are shared (OpenMP spin)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
