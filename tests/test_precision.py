"""Training precision and checkpoints: fp32 master weights under bf16 autocast (pure bf16 only
when asked), the model loaded on this process's device, and full state in the latest checkpoint
only."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lib.core import paths
from lib.modeling.model import precision_settings
from lib.train.loop import Interrupted, TrainSpec, checkpoints, train


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")   # conftest: accelerate reset after each test


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=4)).to(dtype)


def batch_at(step, micro, rank, world):
    g = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    return (torch.randint(0, 64, (4, 1), generator=g) + torch.arange(24)) % 64


def lm_loss(mods, ids):
    return mods[0](input_ids=ids, labels=ids).loss, {}


CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU of the given compute capability as far as lib.modeling.model can tell (there is none here)."""
    import lib.modeling.model as M

    def make(capability=(8, 6)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(M, "cuda_capability", lambda device=None: capability)
    return make


def test_precision_settings_table(fake_gpu):
    fake_gpu((8, 6))                                                         # an A6000
    assert precision_settings("auto", CUDA) == (torch.float32, "bf16")     # fp32 master + autocast
    assert precision_settings("auto", CPU) == (torch.float32, "no")
    assert precision_settings("bf16-mixed", CPU) == (torch.float32, "bf16")
    assert precision_settings("fp16-mixed", CPU) == (torch.float32, "fp16")
    assert precision_settings("bf16", CUDA) == (torch.bfloat16, "no")      # pure bf16: only when asked
    assert precision_settings("fp32", CUDA) == (torch.float32, "no")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_settings("fp16", CPU)


def test_pre_ampere_gpus_get_fp16_with_a_gradient_scaler(fake_gpu):
    """F6: a T4 (capability 7.5) only emulates bf16, without tensor cores: ``auto`` trains with
    fp16 autocast (accelerate adds the GradScaler; the loop's acc.backward / clip_grad_norm_
    unscale) and evaluates fp16 weights."""
    from lib.modeling.model import auto_dtype, precision_record, resolve_precision
    fake_gpu((7, 5))
    assert resolve_precision("auto", CUDA) == "fp16-mixed"
    assert precision_settings("auto", CUDA) == (torch.float32, "fp16")
    assert auto_dtype(CUDA) == torch.float16
    assert precision_record("auto", CUDA) == {"precision": "fp16-mixed", "weights": "float32",
                                              "compute": "float16 autocast over float32 weights",
                                              "saved": "float32"}
    fake_gpu((8, 0))                                                         # A100 and newer: bf16
    assert resolve_precision("auto", CUDA) == "bf16-mixed" and auto_dtype(CUDA) == torch.bfloat16


def test_cuda_asked_without_a_gpu_fails_in_one_line(monkeypatch):
    """F5: ``device: cuda`` on a node whose torch sees no GPU (a driver older than the wheel's
    CUDA build) fails at once, naming torch's CUDA build and the wheel index for older drivers,
    instead of training on the CPU; ``check`` says the same before any stage runs."""
    from lib.modeling.model import OLDER_DRIVER_INDEX, auto_device
    from lib.run.checkvalues import KEY_RULES
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as e:
        auto_device("cuda")
    msg = str(e.value)
    assert "\n" not in msg and torch.__version__ in msg and OLDER_DRIVER_INDEX in msg
    assert auto_device("auto").type == "cpu"                      # auto still means: CPU when no GPU
    problem = KEY_RULES["device"]("cuda")
    assert problem.startswith("is 'cuda', but torch sees no GPU: ") and "\n" not in problem and OLDER_DRIVER_INDEX in problem
    assert KEY_RULES["precision"]("fp16") .startswith("must be one of auto, bf16-mixed, fp16-mixed")


def test_a6000_profile_asks_for_cuda():
    from lib.core.params import load_profile
    prof = load_profile(paths.PARAMS / "a6000.yaml")
    assert prof.sections["common"]["device"] == "cuda"


def test_train_spec_maps_precision_to_accelerate(fake_gpu):
    from lib.train.common import train_spec
    base = {"steps": 3, "lr": 1e-3, "device": "auto"}
    assert train_spec({**base, "precision": "auto"}).mixed_precision == "no"         # this CPU
    assert train_spec({**base, "precision": "bf16-mixed"}).mixed_precision == "bf16"
    assert train_spec({**base, "precision": "bf16"}).mixed_precision == "no"
    fake_gpu((8, 6))
    assert train_spec({**base, "device": "cuda", "precision": "auto"}).mixed_precision == "bf16"


class _Cfg(dict):
    def __init__(self, folder, **kw):
        super().__init__(kw)
        self.folder = folder

    def model_from(self, init_from):
        return str(self.folder)


def test_load_start_dtype_and_device(tiny_assets):
    from lib.train.common import load_start
    model, _, _ = load_start(_Cfg(tiny_assets["model"], device="auto", precision="auto"))
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.device.type == "cpu"
    model, _, _ = load_start(_Cfg(tiny_assets["model"], device="auto", precision="bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_qlora_maps_each_process_to_its_own_gpu(monkeypatch):
    """Under ``accelerate launch`` process k must load its 4-bit model on GPU k, not GPU 0."""
    from lib.train import pretrain
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pretrain.qlora_device_map() == {"": 3}
    monkeypatch.delenv("LOCAL_RANK")
    assert pretrain.qlora_device_map() == {"": 0}


def changed_share(before: dict, model) -> float:
    n = c = 0
    for k, v in model.state_dict().items():
        n += v.numel()
        c += int((v.float() != before[k].float()).sum())
    return c / n


def test_fp32_master_weights_keep_small_updates_that_pure_bf16_loses(tmp_path):
    """At lr 1e-5 AdamW moves each weight by ~1e-5, below bf16's resolution (2^-8 relative) for
    almost every weight: with fp32 master weights (bf16 autocast) nearly every weight moves, in
    pure bf16 most updates round away."""
    spec = dict(steps=3, lr=1e-5, warmup_steps=0, schedule="constant", report_to="none")
    mixed = tiny_llama()
    before = {k: v.clone() for k, v in mixed.state_dict().items()}
    train([mixed], batch_at, lm_loss, TrainSpec(mixed_precision="bf16", **spec), tmp_path / "mixed")
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}
    mixed_share = changed_share(before, mixed)
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    pure = tiny_llama(torch.bfloat16)
    before = {k: v.clone() for k, v in pure.state_dict().items()}
    train([pure], batch_at, lm_loss, TrainSpec(mixed_precision="no", **spec), tmp_path / "pure")
    assert {p.dtype for p in pure.parameters()} == {torch.bfloat16}
    pure_share = changed_share(before, pure)
    assert mixed_share > 0.95 and pure_share < 0.5, (mixed_share, pure_share)


def test_only_the_latest_checkpoint_holds_the_training_state(tmp_path):
    model = tiny_llama()
    spec = TrainSpec(steps=6, save_every=2, report_to="none", keep_checkpoints=True)
    r = train([model], batch_at, lm_loss, spec, tmp_path, save_fn=lambda d: model.save_pretrained(d))
    names = [c.split("/")[-1] for c in r["checkpoints"]]
    assert names == ["step-000002", "step-000004", "step-000006"]
    assert [(tmp_path / "checkpoints" / n / "state").exists() for n in names] == [False, False, True]
    for n in names:                                # every kept checkpoint is a loadable model
        m = LlamaForCausalLM.from_pretrained(tmp_path / "checkpoints" / n / "model")
        assert m.config.num_hidden_layers == 2
    last = LlamaForCausalLM.from_pretrained(tmp_path / "checkpoints" / names[-1] / "model")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values()))


def test_resume_is_exact_when_older_checkpoints_were_trimmed(tmp_path):
    spec = TrainSpec(steps=12, lr=1e-2, warmup_steps=2, save_every=4, grad_accum=2, report_to="none")
    ref = tiny_llama()
    train([ref], batch_at, lm_loss, spec, tmp_path / "ref")
    broken = tiny_llama()
    with pytest.raises(Interrupted):
        train([broken], batch_at, lm_loss, spec, tmp_path / "res", stop_at=9)
    done = checkpoints(tmp_path / "res")
    assert [p.name for p in done] == ["step-000004", "step-000008"]
    assert not (done[0] / "state").exists() and (done[1] / "state").exists()
    resumed = tiny_llama()
    r = train([resumed], batch_at, lm_loss, spec, tmp_path / "res")
    assert r["resumed_from"].endswith("step-000008")
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
