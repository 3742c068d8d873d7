"""The shared training loop: losses fall, frozen tensors stay frozen, resume is exact."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lib.train.loop import Interrupted, TrainSpec, checkpoints, lr_lambda, train


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


# a learnable stream: every sequence counts up modulo 64 from a seeded start
def batch_at(step, micro, rank, world):
    g = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    start = torch.randint(0, 64, (4, 1), generator=g)
    return (start + torch.arange(24)) % 64


def lm_loss(mods, ids):
    return mods[0](input_ids=ids, labels=ids).loss, {}


def test_loss_falls_and_frozen_params_stay_bit_identical(tmp_path):
    model = tiny_llama()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("lm_head")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = TrainSpec(steps=30, lr=3e-2, warmup_steps=3, report_to="none")
    r = train([model], batch_at, lm_loss, spec, tmp_path, tokens_in=lambda b: b.numel())
    losses = [h["loss"] for h in r["history"] if "loss" in h]
    assert losses[-1] < 0.7 * losses[0]
    for k, v in model.state_dict().items():
        if k.startswith("lm_head"):
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k
    assert r["tokens_per_second"] > 0 and len(r["checkpoints"]) == 1


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    spec = TrainSpec(steps=12, lr=1e-2, warmup_steps=2, save_every=4, grad_accum=2, report_to="none")
    ref = tiny_llama()
    train([ref], batch_at, lm_loss, spec, tmp_path / "ref")
    broken = tiny_llama()
    with pytest.raises(Interrupted):
        train([broken], batch_at, lm_loss, spec, tmp_path / "res", stop_at=6)
    assert [p.name for p in checkpoints(tmp_path / "res")] == ["step-000004"]
    resumed = tiny_llama()              # a new process would start from the base weights too
    r = train([resumed], batch_at, lm_loss, spec, tmp_path / "res")
    assert r["resumed_from"].endswith("step-000004")
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["step"] for h in r["history"] if "loss" in h] == list(range(1, 13))


def test_checkpoints_are_loadable_and_listed(tmp_path):
    model = tiny_llama()
    spec = TrainSpec(steps=4, save_every=2, report_to="none", keep_checkpoints=True)
    r = train([model], batch_at, lm_loss, spec, tmp_path, save_fn=lambda d: model.save_pretrained(d))
    assert [c.split("/")[-1] for c in r["checkpoints"]] == ["step-000002", "step-000004"]
    again = LlamaForCausalLM.from_pretrained(r["checkpoints"][-1] + "/model")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_warmup_then_cosine_schedule():
    f = lr_lambda(TrainSpec(steps=10, warmup_steps=2, min_lr_ratio=0.1))
    assert [round(f(s), 4) for s in (0, 1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(2, 10))


def test_bad_spec_and_nothing_to_train(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        TrainSpec(steps=1, schedule="linear")
    model = tiny_llama().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train([model], batch_at, lm_loss, TrainSpec(steps=1, report_to="none"), tmp_path)


def test_batches_are_moved_to_the_model_device():
    """Batch functions build CPU tensors; the loop moves every tensor (nested too) to the
    accelerator's device. The meta device stands in for a GPU here."""
    from lib.train.loop import to_device
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "pair": (torch.zeros(2), [torch.zeros(1)]),
             "n": 3, "name": "ko"}
    out = to_device(batch, torch.device("meta"))
    assert out["input_ids"].device.type == "meta" and out["input_ids"].dtype == torch.long
    assert isinstance(out["pair"], tuple) and out["pair"][0].is_meta and out["pair"][1][0].is_meta
    assert out["n"] == 3 and out["name"] == "ko"
