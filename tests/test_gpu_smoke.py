"""``bench/gpu_smoke.py``: skips cleanly without CUDA, and its code (the 1.3B cases on a tiny
shape) runs on a CPU, so the first GPU run does not fail on a typo. No speed is asserted.

Also pinned here (GPU_AUDIT.md F9, F13): its FLOPs are model FLOPs (hand-computed below), a GPU
missing from its peak table gives "n/a" and still a table and valid JSON, H100 PCIe is not
taken for SXM, and the script starts without nbformat (a GPU image may lack notebook packages).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from lib.core import paths
from lib.run.plan import Shape

SCRIPT = paths.PROJ_ROOT / "bench" / "gpu_smoke.py"


def run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=paths.PROJ_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def without_nbformat(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where ``import nbformat`` raises ImportError."""
    prelude = "import sys\nsys.modules['nbformat'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          cwd=paths.PROJ_ROOT, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real run is a benchmark")
def test_skips_without_cuda():
    assert run() == {"bench": "gpu_smoke", "skipped": True, "machine": run()["machine"]}


@pytest.mark.slow
def test_tiny_cases_run_the_same_code_on_cpu():
    out = run("--tiny", "--steps", "3")
    cases = {c["case"]: c for c in out["cases"]}
    expected = {"03_contrastive", "05_full", "06_lora"} | ({"05_qlora"} if torch.cuda.is_available() else set())
    assert set(cases) == expected
    for c in cases.values():
        assert "error" not in c, c
        assert c["tokens_per_second"] > 0 and c["estimated_bytes"] > 0
        assert c["hardware_flops_per_token"] > c["model_flops_per_token"] > 0   # all cases checkpoint
        assert c["mfu"] is None and c["hfu"] is None                           # a CPU has no peak here
    assert cases["05_full"]["trainable"] == cases["05_full"]["params"]
    assert cases["03_contrastive"]["trainable"] < cases["03_contrastive"]["params"]   # head frozen


# ----------------------------------------------------------------------------- FLOPs (F9)

SHEARED_KO = Shape("llama", hidden=2048, layers=24, intermediate=5504, heads=16, kv_heads=16, vocab=39478)
# by hand: one layer's matmuls 4 x 2048^2 + 3 x 2048 x 5504 = 50,593,792; x 24 = 1,214,251,008;
# LM head 39,478 x 2048 = 80,850,944; causal attention in training 3 x 2 x 24 x 2048 x seq
LAYERS, HEAD = 1_214_251_008, 80_850_944


def test_model_flops_of_full_training_by_hand(gs):
    assert SHEARED_KO.linear_params == LAYERS and SHEARED_KO.embed_params == HEAD
    f = gs.flops_per_token(SHEARED_KO, seq=2048, method="full", gc=True)
    attention = 6 * 24 * 2048 * 2048                                   # 603,979,776
    assert f["model"] == 6 * (LAYERS + HEAD) + attention == 8_374_591_488   # the input embedding is a lookup
    # HFU adds the checkpointed layers' second forward (matmuls and attention), nothing else
    assert f["hardware"] - f["model"] == 2 * LAYERS + 2 * 24 * 2048 * 2048 == 2_629_828_608
    assert gs.flops_per_token(SHEARED_KO, seq=2048, method="full", gc=False)["hardware"] == f["model"]


def test_model_flops_of_lora_and_of_03_by_hand(gs):
    # LoRA r=64 on q,k,v,o,gate,up,down: 64 x (2048+2048) x 4 + 64 x (2048+5504) x 3 = 2,498,560 a layer
    adapters = 24 * 2_498_560
    f = gs.flops_per_token(SHEARED_KO, seq=2048, method="lora", gc=True)
    # frozen base: forward + input gradients (4N); adapters and the LM head (modules_to_save) train (6N)
    assert f["model"] == 4 * LAYERS + 6 * adapters + 6 * HEAD + 6 * 24 * 2048 * 2048 == 6_305_882_112
    assert gs.flops_per_token(SHEARED_KO, seq=2048, method="qlora")["model"] == f["model"]
    # 03: 128 tokens, the LM head gives no logits the loss reads
    assert gs.case_flops("03_contrastive", SHEARED_KO)["model"] == 6 * LAYERS + 6 * 24 * 2048 * 128 == 7_323_254_784
    with pytest.raises(ValueError, match="method must be"):
        gs.flops_per_token(SHEARED_KO, seq=8, method="dora")


# ----------------------------------------------------------------------------- peaks and the table (F9)

def test_peaks_tell_h100_variants_apart(gs):
    assert gs.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert gs.peak_tflops("NVIDIA H100 NVL")[0] == 835.0
    assert gs.peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert gs.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0        # not A10's 125
    assert gs.peak_tflops("NVIDIA A10")[0] == 125.0
    assert gs.peak_tflops("Tesla T4")[0] is None
    assert gs.peak_tflops("Tesla T4", 65.0) == (65.0, "--peak-tflops")


def fake_row(device: str) -> dict:
    return {"case": "05_full", "device": device, "mixed_precision": "bf16", "params": 1, "trainable": 1,
            "tokens_per_step": 8192, "seconds_per_step": 0.5, "tokens_per_second": 16384.0,
            "model_flops_per_token": 8_374_591_488, "hardware_flops_per_token": 11_004_420_096,
            "peak_bytes": 30 * 2**30, "estimated_bytes": 29 * 2**30}


def test_unknown_gpu_gives_na_a_table_and_valid_json(gs, monkeypatch, capsys):
    monkeypatch.setattr(gs, "cuda_available", lambda: True)
    monkeypatch.setattr(gs, "run_cases", lambda cases, args: [fake_row("Tesla T4"),
                                                              {"case": "06_lora", "error": "CUDA out of memory"}])
    assert gs.main(["--cases", "05_full,06_lora"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    row = next(line for line in out if line.startswith("| 05_full"))
    assert row.split("|")[4].strip() == "n/a" and row.split("|")[5].strip() == "n/a"   # MFU, HFU
    assert any("Tesla T4" in line and "--peak-tflops" in line for line in out)
    assert any(line.startswith("| 06_lora | failed: CUDA out of memory") for line in out)
    res = json.loads(out[-1])
    assert res["cases"][0]["mfu"] is None and res["cases"][0]["peak_tflops"] is None


def test_given_peak_gives_mfu_and_hfu(gs, monkeypatch, capsys):
    monkeypatch.setattr(gs, "cuda_available", lambda: True)
    monkeypatch.setattr(gs, "run_cases", lambda cases, args: [fake_row("NVIDIA H100 PCIe")])
    gs.main(["--cases", "05_full"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cases"][0]
    assert res["peak_tflops"] == 756.0
    assert res["mfu"] == pytest.approx(8_374_591_488 * 16384 / 756e12)          # 0.1815
    assert res["hfu"] == pytest.approx(11_004_420_096 * 16384 / 756e12)


def test_help_works(gs, capsys):
    with pytest.raises(SystemExit) as e:
        gs.main(["--help"])
    assert e.value.code == 0 and "--peak-tflops" in capsys.readouterr().out


# ----------------------------------------------------------------------------- without nbformat (F13)

def test_help_runs_without_nbformat():
    proc = without_nbformat(f"import runpy\nsys.argv = ['gpu_smoke.py', '--help']\n"
                            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model-FLOPs utilisation" in proc.stdout


def test_a_tiny_case_runs_without_nbformat():
    """A case imports lib.run.plan -> lib.core.params: needs lib/core/params.py not to import nbformat at module
    level (GPU_AUDIT.md F13)."""
    proc = without_nbformat(f"import runpy\nsys.argv = ['gpu_smoke.py', '--case', '05_full', '--tiny', '--steps', '3']\n"
                            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["case"] == "05_full" and row["tokens_per_second"] > 0


def test_cases_past_the_total_timeout_are_reported_not_run(gs):
    import argparse
    args = argparse.Namespace(total_timeout=5.0, case_timeout=100.0, steps=3, tiny=True)
    assert gs.run_cases(["05_full", "06_lora"], args) == [
        {"case": "05_full", "error": "not run: --total-timeout 5 s spent"},
        {"case": "06_lora", "error": "not run: --total-timeout 5 s spent"}]
