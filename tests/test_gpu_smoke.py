"""``bench/gpu_smoke.py``: skips cleanly without CUDA, and its code (the 1.3B cases on a tiny
shape) runs on a CPU, so the first GPU run does not fail on a typo. No speed is asserted."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lib import paths

SCRIPT = paths.PROJ_ROOT / "bench" / "gpu_smoke.py"


def run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=paths.PROJ_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    assert cases["05_full"]["trainable"] == cases["05_full"]["params"]
    assert cases["03_contrastive"]["trainable"] < cases["03_contrastive"]["params"]   # head frozen
