"""Every benchmark runs from the repository with ``--quick`` and ends with its JSON line.

Speed is not asserted (benchmarks measure it, tests do not time anything); what is asserted is
what must hold whatever the machine: both sides of a comparison did the same work (same loss,
same items and accuracies), packing wastes nothing, the merged tokenizer is shorter on Korean.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(name: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench/{name}.py failed:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    out = json.loads(last)
    assert out["bench"] == name and out["machine"]["cores"] >= 1
    assert "|---" in proc.stdout                       # the printed table
    return out


@pytest.mark.slow
def test_train_vs_trainer_same_work():
    out = run_bench("train_vs_trainer")
    assert out["ratio"] > 0 and out["baseline"] == "transformers.Trainer"
    # same model, data and optimizer: the same losses, so the speed ratio compares like with like
    assert out["ours"]["mean_loss"] == pytest.approx(out["trainer"]["mean_loss"], abs=1e-3)
    assert out["ours"]["peak_rss_mb"] > out["ours"]["rss_at_start_mb"]
    # issue #26: the packing=documents variant and the training window's own peak, as ratios
    assert out["documents"]["tokens_per_second"] > 0 and len(out["ratios"]) == 2
    assert all(r["train_peak"] > 0 and r["peak_rss"] > 0 for r in out["ratios"].values())


@pytest.mark.slow
def test_packing_wastes_nothing():
    out = run_bench("packing")
    share = out["nonpad_share"]
    assert share["packed"]["min"] > 0.999
    assert share["pad_longest"]["max"] <= 1.0 and share["pad_block"]["min"] < share["packed"]["min"]


@pytest.mark.slow
def test_contrastive_batch_sizes():
    out = run_bench("contrastive")
    rows = out["rows"]
    assert [r["batch"] for r in rows] == sorted(r["batch"] for r in rows) and len(rows) >= 2
    assert all(r["pairs_per_second"] > 0 and 0 <= r["pad_share"] < 1 for r in rows)


@pytest.mark.slow
def test_scaling_cpu_and_no_gpu_needed():
    import torch
    out = run_bench("scaling")
    cpu = out["cpu"]
    assert [r["hidden"] for r in cpu] == sorted(r["hidden"] for r in cpu)
    assert cpu[-1]["mflops_per_token"] > cpu[0]["mflops_per_token"] and all(r["tokens_per_second"] > 0 for r in cpu)
    if not torch.cuda.is_available():
        assert out["gpu"] is None


@pytest.mark.slow
def test_eval_paths_score_the_same_items():
    out = run_bench("eval_vs_lm_eval")
    assert out["same_items"] is True and out["same_acc"] is True and out["ratio_items_per_s"] > 0


@pytest.mark.slow
def test_tokenizer_merged_is_shorter_on_korean():
    out = run_bench("tokenizer")
    tpc = out["tokens_per_char"]
    assert tpc["ko_merged"] < tpc["ko_base"]
    assert all(r["same_as_sp"] == r["lines"] for r in out["rows"])   # HF and SentencePiece agree
