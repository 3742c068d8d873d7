"""Document-aware packing (issue #26, item 2): in a block packed with ``packing: documents`` each
document gets the per-token loss it has alone; with ``concat`` it does not."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from test_stages_clm import make_cfg
from transformers import LlamaConfig, LlamaForCausalLM

from lib.data.packing import MixedStream, document_positions, documents_per_row, pack
from lib.modeling.chunked_ce import lm_inputs, token_nll
from lib.modeling.losses import IGNORE_INDEX, clm_labels
from lib.run.checkvalues import value_problem
from lib.world.basemodel import BaseModelSpec, lm_batch, new_model, pretrain

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test

BOS, EOS, VOCAB = 1, 2, 101


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=BOS, eos_token_id=EOS, attn_implementation=attn)
    return LlamaForCausalLM(cfg).float().eval()


def documents(n: int, seed: int = 0) -> list[list[int]]:
    """``[BOS] ids [EOS]`` of 4 to 18 random ids (no special ids inside)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(4, 19, (n,), generator=g)
    return [[BOS, *torch.randint(3, VOCAB, (int(k),), generator=g).tolist(), EOS] for k in lens]


def alone_nll(model, doc: list[int], chunk: int) -> torch.Tensor:
    """Per-token NLL of ``doc`` as the only sequence: targets doc[1:], fp32."""
    ids = torch.tensor([doc])
    mask = torch.ones_like(ids)
    nll, _ = token_nll(model, {"input_ids": ids, "attention_mask": mask, "labels": clm_labels(ids, mask, BOS)}, chunk)
    return nll[0]


def worst_gap(model, batch: dict, docs: list[list[int]], chunk: int) -> float:
    """Largest |packed - alone| per-token NLL over every whole document of the batch's rows."""
    nll, valid = token_nll(model, batch, chunk)
    by_ids = {tuple(d): d for d in docs}
    gaps = []
    for r, row in enumerate(batch["input_ids"].tolist()):
        starts = [i for i, t in enumerate(row) if t == BOS]
        for s, e in zip(starts, starts[1:] + [len(row)]):
            if tuple(row[s:e]) not in by_ids:          # the row's last piece, cut by the block's end
                continue
            # position t predicts token t+1: the document's targets are nll[s : e-1]
            assert not valid[r, s - 1] if s > 0 else True   # its BOS is no target
            gaps.append((nll[r, s:e - 1] - alone_nll(model, row[s:e], chunk)).abs().max().item())
    assert len(gaps) >= 4, "the batch should hold several whole documents"
    return max(gaps)


def packed_batch(docs: list[list[int]], packing: str, block: int = 48) -> dict:
    stream = MixedStream({"x": pack(docs, block)}, batch_size=3, seed=0, bos_token_id=BOS, packing=packing)
    return {k: v for k, v in stream.batch(0).items() if k != "source"}


def test_document_positions_restart_at_each_bos_and_each_row():
    ids = torch.tensor([[5, 6, BOS, 7, 8, BOS, 9], [BOS, 3, 4, EOS, BOS, 5, 6]])
    assert document_positions(ids, BOS).tolist() == [[0, 1, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert documents_per_row(ids, BOS) == 2.5                 # 3 (a leading piece + 2) and 2


def test_documents_batch_masks_bos_and_carries_positions():
    docs = documents(12)
    b = packed_batch(docs, "documents")
    assert torch.equal(b["position_ids"], document_positions(b["input_ids"], BOS))
    assert bool((b["labels"][b["input_ids"] == BOS] == IGNORE_INDEX).all())
    assert "position_ids" not in packed_batch(docs, "concat")
    with pytest.raises(ValueError, match="bos_token_id"):
        MixedStream({"x": pack(docs, 48)}, packing="documents")
    with pytest.raises(ValueError, match="packing must be one of"):
        MixedStream({"x": pack(docs, 48)}, bos_token_id=BOS, packing="blocks")
    assert value_problem("packing", "documents") is None and "must be one of" in value_problem("packing", "x")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk", [0, 16])
def test_packed_document_has_its_loss_alone_fp32(attn, chunk):
    model, docs = tiny_llama(attn), documents(12)
    with torch.no_grad():
        assert worst_gap(model, packed_batch(docs, "documents"), docs, chunk) < 1e-5
        # the control: concatenated, a document sees the ones before it and its positions run on
        assert worst_gap(model, packed_batch(docs, "concat"), docs, chunk) > 1e-2


def test_packed_document_has_its_loss_alone_bf16_autocast():
    model, docs = tiny_llama("sdpa"), documents(12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert worst_gap(model, packed_batch(docs, "documents"), docs, 16) < 1e-2       # measured 9.4e-4
        assert worst_gap(model, packed_batch(docs, "concat"), docs, 16) > 0.1


def test_flash_attention_gets_one_flattened_row_that_keeps_rows_apart():
    """flash-attention's varlen path reads documents from the position ids of one flattened row only;
    each row starts at position 0, so flattening keeps rows apart: sdpa on the flattened row gives
    each row's own hidden states (flash itself needs a GPU)."""
    docs = documents(12)
    b = packed_batch(docs, "documents")
    fake = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    flat = lm_inputs(fake, b)
    assert flat["input_ids"].shape == (1, b["input_ids"].numel()) and "attention_mask" not in flat
    assert flat["shape"] == tuple(b["input_ids"].shape)
    model = tiny_llama("sdpa")
    with torch.no_grad():
        rows = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False)[0]
        one = model.model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False)[0]
    torch.testing.assert_close(one.reshape(rows.shape), rows, atol=2e-5, rtol=0)


def test_toy_base_model_documents_loss_is_the_documents_own():
    model, docs = tiny_llama("sdpa"), documents(3, seed=1)
    block = torch.tensor([[t for d in docs for t in d]])
    docs_in = lm_batch(block, "documents", BOS)
    with torch.no_grad():
        alone = torch.cat([alone_nll(model, d, 0) for d in docs])
        torch.testing.assert_close(model(**docs_in).loss, alone.mean(), atol=1e-5, rtol=0)   # HF's loss
        per_token = {}
        for mode in ("documents", "concat"):
            out = model(**lm_batch(block, mode, BOS))
            nll = torch.nn.functional.cross_entropy(out.logits[0, :-1], block[0, 1:], reduction="none")
            per_token[mode] = nll[docs_in["labels"][0, 1:] != IGNORE_INDEX]     # the documents' targets
    torch.testing.assert_close(per_token["documents"], alone, atol=1e-5, rtol=0)
    assert (per_token["concat"] - alone).abs().max() > 1e-2
    with pytest.raises(ValueError, match="packing"):
        BaseModelSpec(packing="doc")


def test_toy_base_model_pretrains_with_document_packing():
    spec = BaseModelSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seq_len=48, batch_size=4,
                         steps=30, lr=1e-2, warmup_steps=3, packing="documents")
    torch.manual_seed(0)
    docs = [d for _ in range(4) for d in documents(12)]        # the same 12 documents, 4 times
    out = pretrain(new_model(spec, VOCAB), docs, spec, progress=False)
    assert out["final_loss"] < 0.8 * out["loss_curve"][0]


@pytest.mark.slow
@pytest.mark.parametrize("align_weight", [0.0, 0.5])
def test_pretrain_with_document_packing_trains(tmp_path, tiny_assets, align_weight):
    """Stage 05 on the tiny model with ``packing: documents``, alone and with stage 1's kept
    contrastive term (whose causal-LM batches then carry the position ids too)."""
    from lib.train import pretrain
    ko, en = tmp_path / "pairs.ko", tmp_path / "pairs.en"
    ko.write_text("\n".join(KO_LINES[:32]) + "\n", encoding="utf-8")
    en.write_text("\n".join(EN_LINES[:32]) + "\n", encoding="utf-8")
    cfg = make_cfg("05_stage3_pretrain", tmp_path, tiny_assets, packing="documents", steps=8, eval_every=0,
                   save_every=0, align_weight=align_weight, align_pairs_ko=str(ko), align_pairs_en=str(en))
    m = pretrain.run(cfg)
    assert m["packing_mode"] == "documents" and m["documents_per_block"] > 1.5
    assert m["loss"]["last"] < 0.85 * m["loss"]["first"]
