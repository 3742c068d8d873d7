"""InfoNCE and causal-LM losses against numbers computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from lib.modeling.losses import IGNORE_INDEX, clm_labels, clm_loss, info_nce


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("t", [1.0, 0.5, 0.05])
def test_info_nce_aligned_orthonormal_pairs(t):
    # S = I / t; each row and column: -log(e^{1/t} / (e^{1/t} + (B-1) e^0)) = log(1 + (B-1) e^{-1/t}).
    for n in (2, 3):
        eye = torch.eye(n)
        assert_close(info_nce(eye, eye, t), scalar(math.log(1 + (n - 1) * math.exp(-1 / t))))


def test_info_nce_asymmetric_case_by_hand():
    # u = I, v0 = (1, 0), v1 = (1, 1)/sqrt 2, t = 1/2, c = 1/sqrt 2: S = [[2, 2c], [0, 2c]].
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # unnormalised on purpose: info_nce normalises
    c = 1 / math.sqrt(2)
    a2b = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c)))      # row 0 picks column 0
           - math.log(math.exp(2 * c) / (1 + math.exp(2 * c)))) / 2      # row 1 picks column 1
    b2a = (-math.log(math.exp(2) / (math.exp(2) + 1))                    # column 0 picks row 0
           + math.log(2)) / 2                                            # column 1: a tie, log 2
    assert_close(info_nce(a, b, 0.5), scalar((a2b + b2a) / 2))


def test_info_nce_no_signal_is_log_batch():
    a = torch.ones(4, 8)  # every similarity equal
    assert_close(info_nce(a, a, 0.1), scalar(math.log(4)))


def test_info_nce_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    assert_close(info_nce(a, b, 0.1), info_nce(b, a, 0.1))
    assert_close(info_nce(3 * a, 0.5 * b, 0.1), info_nce(a, b, 0.1))
    assert info_nce(a, b, 0.1) != info_nce(a, b[[1, 0, 2, 3, 4, 5]], 0.1)  # pairing matters


def test_info_nce_aligned_beats_shuffled_and_has_gradient():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 16, generator=g)
    b = a + 0.05 * torch.randn(8, 16, generator=g)
    shuffled = b[torch.roll(torch.arange(8), 1)]
    aligned_loss, shuffled_loss = info_nce(a, b, 0.05), info_nce(a, shuffled, 0.05)
    assert aligned_loss < 0.01 < 5.0 < shuffled_loss
    x = a.clone().requires_grad_()
    info_nce(x, shuffled, 0.05).backward()
    assert x.grad.abs().sum() > 0


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.ones(3, 4), torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.eye(2), torch.eye(2), 0.0)


def test_clm_loss_uniform_logits_is_log_vocab_and_shift():
    # Zero logits: every target costs log V. Labels [-, 1, 2, -100]: two targets, from positions 0, 1.
    assert_close(clm_loss(torch.zeros(1, 4, 7), torch.tensor([[5, 1, 2, IGNORE_INDEX]])), scalar(math.log(7)))
    # Position 0 is certain of token 3 and the label after it is 3: the shift makes that loss 0.
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 3] = 100.0
    assert_close(clm_loss(logits, torch.tensor([[0, 3, IGNORE_INDEX]])), scalar(0.0))
    assert clm_loss(logits, torch.tensor([[3, 0, IGNORE_INDEX]])) > 50  # unshifted would be 0


def test_clm_loss_matches_hf_internal_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4)).eval()
    ids = torch.randint(3, 50, (2, 6))
    ids[:, 0] = 1
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    labels = clm_labels(ids, mask, bos_token_id=1)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert_close(clm_loss(out.logits, labels), out.loss)


def test_clm_loss_with_nothing_to_predict_is_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = clm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()  # still attached to the graph
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_clm_labels_masks_pads_boundaries_and_prompt():
    ids = torch.tensor([[1, 7, 8, 1, 9, 0]])  # two packed documents, then a pad
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    prompt = torch.tensor([[1, 0, 1, 1, 1, 1]])
    x = IGNORE_INDEX
    assert clm_labels(ids, mask, bos_token_id=1).tolist() == [[x, 7, 8, x, 9, x]]
    assert clm_labels(ids, mask, bos_token_id=1, loss_mask=prompt).tolist() == [[x, x, 8, x, 9, x]]
    assert clm_labels(ids).tolist() == ids.tolist()
