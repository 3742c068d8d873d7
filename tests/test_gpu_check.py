"""The prepared GPU check (``bench/gpu_check.sh``) and what it runs, on a CPU: the script parses,
its CPU-capable parts write a summary, a part that cannot run is recorded and the rest goes on,
the precision probes (``bench/gpu_probes.py``) report what lib computes under bf16 autocast, and
``bench/gpu_stages.py`` runs notebooks' cells as Papermill would and reads a run's figures back.
No GPU is needed or used; no speed is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.core import paths

BENCH = paths.PROJ_ROOT / "bench"
CHECK = BENCH / "gpu_check.sh"
F1_TOL = 1e-4            # bench/gpu_probes.py's F1_TOL: |InfoNCE loss under autocast - fp32 loss|


def probes(tmp_path: Path, *args: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    out = tmp_path / "probes.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_probes.py"), "--device", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, cwd=paths.PROJ_ROOT, timeout=300)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return rows, proc


def check(tmp_path: Path, **env: str) -> dict:
    e = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, cwd=tmp_path, env=e, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- bench/gpu_probes.py

def test_probes_on_cpu_under_bf16_autocast(tmp_path):
    rows, proc = probes(tmp_path, "--only", "f1,f2,f3,f7", "--precision", "bf16-mixed", "--strict")
    by = {}
    for r in rows:
        by.setdefault(r.get("probe") or r.get("bench"), []).append(r)
    assert set(by) == {"f1", "f2", "f3", "f7", "gpu_probes"}, proc.stderr[-2000:]
    assert not any("error" in r for r in rows), [r.get("traceback") for r in rows if "error" in r]
    # F1: lib's InfoNCE (both) stays fp32 inside bf16 autocast, as the loop calls it (lib/modeling/losses.py fix)
    assert {r["fn"] for r in by["f1"]} == {"lib.modeling.losses.info_nce", "lib.train.align_terms.masked_info_nce"}
    for r in by["f1"]:
        assert r["similarity_dtype"] == "float32" and r["loss_dtype"] == "float32", r
        assert r["loss_abs_err"] < F1_TOL and r["grad_rel_err"] < 1e-3, r
        assert r["loss_fp32"] > 0
    # F2: same weights; the reference in the training precision gives rewards of exactly 0, a plain
    # fp32 reference against the prepared (autocast) policy does not (what ee17a42's train_dpo did)
    (f2,) = by["f2"]
    assert f2["mixed_precision"] == "bf16" and f2["forward_patched_by_prepare"] is True
    assert f2["reference_in_training_precision"] == {"reward_accuracy": 0.0, "margin": 0.0, "max_abs_logp_diff": 0.0}
    assert f2["reference_plain"]["max_abs_logp_diff"] > 0
    # F3: on a CPU everything is fp32, so the whole delta survives (the GPU is where it can round away)
    assert [r["delta_rel"] for r in by["f3"]] == [1e-3, 1e-2]
    for r in by["f3"]:
        assert r["add_chat_vector"]["saved_dtype"] == "float32"
        assert r["add_chat_vector"]["share_kept"] == pytest.approx(1.0, abs=1e-3)
    # F7: autocast and accelerate's prepare (no FSDP) leave RoPE's inv_freq in fp32
    (f7,) = by["f7"]
    assert f7["autocast_forward"]["dtype"] == f7["prepared"]["dtype"] == "float32"
    assert f7["prepared"]["mixed_precision"] == "bf16"
    (last,) = by["gpu_probes"]
    assert last["ok"] == {"f1": True, "f2": True, "f3": True, "f7": True} and last["errors"] == {}
    assert proc.returncode == 0


def test_probes_refuse_unknown_probe_names(tmp_path):
    _, proc = probes(tmp_path, "--only", "f1,f9")
    assert proc.returncode == 2 and "choose among f1, f2, f3, f7, kvscore" in proc.stderr


# ----------------------------------------------------------------------------- bench/gpu_check.sh

@pytest.mark.slow
def test_cpu_parts_write_a_summary(tmp_path):
    s = check(tmp_path, PARTS="env,probes", DEVICE="cpu")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "log.txt", "probes.jsonl", "summary.json", "summary.txt"]
    assert s["parts"]["env"]["status"] == "ok" and s["parts"]["env"]["figures"]["torch"] == torch.__version__
    assert s["parts"]["probes"]["status"] == "ok", s["parts"]["probes"]
    assert set(s["parts"]["probes"]["figures"]) >= {"info_nce", "masked_info_nce", "f2_dpo_step0", "f3_delta_0.001",
                                                     "f7_inv_freq"}
    assert s["all_ok"] is True and 0 < s["total_seconds"] <= s["budget_seconds"]
    text = (out / "summary.txt").read_text()
    assert text.splitlines()[1].startswith("env") and "probes           ok" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_gpu_parts_are_skipped_and_said_so(tmp_path):
    s = check(tmp_path, PARTS="env,probes,qlora,smoke", BUDGET="200")
    parts = s["parts"]
    assert parts["env"]["status"] == "FAIL"                                 # DEVICE=cuda, no GPU: said first
    assert "sees no GPU" in (tmp_path / "out" / "env.txt").read_text()
    for name in ("probes", "smoke"):
        assert parts[name]["status"] == "SKIP" and "no GPU" in parts[name]["note"], parts[name]
    assert parts["qlora"]["status"] == "SKIP" and "stages" in parts["qlora"]["note"]
    assert s["all_ok"] is False


def test_a_spent_budget_skips_parts_instead_of_starting_them(tmp_path):
    s = check(tmp_path, PARTS="probes", DEVICE="cpu", BUDGET="20")
    assert s["parts"]["probes"] == {"status": "SKIP", "rc": "-", "seconds": 0, "note": "budget spent", "figures": {}}


# ----------------------------------------------------------------------------- bench/gpu_stages.py

def test_cells_run_with_parameters_injected_after_the_parameters_cell(tmp_path):
    def cell(src, tags=()):
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": src, "outputs": []}
    nb = {"cells": [cell("import os\nseen = []"), {"cell_type": "markdown", "metadata": {}, "source": "# x"},
                    cell(["run = 'toy'  # name\n", "steps = 3\n"], ["parameters"]),
                    cell("seen.append((run, steps))\nfrom pathlib import Path\n"
                         "Path(out).write_text(repr((seen, os.getcwd())))"),
                    cell("steps  # a bare expression, as notebooks end cells")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "nbs").mkdir()
    nb_path = tmp_path / "nbs" / "x.ipynb"
    nb_path.write_text(json.dumps(nb))
    result = tmp_path / "result.txt"
    (tmp_path / "p.json").write_text(json.dumps({"run": "/abs/run", "steps": 8, "out": str(result)}))
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_stages.py"), "_cells", str(nb_path), str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert result.read_text() == repr(([("/abs/run", 8)], str(tmp_path / "nbs")))
    nb["cells"][3]["source"] = "raise RuntimeError('boom')"
    nb_path.write_text(json.dumps(nb))
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_stages.py"), "_cells", str(nb_path), str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "x.ipynb, code cell 2" in proc.stderr and "RuntimeError: boom" in proc.stderr


def test_collect_reads_the_figures_a_precision_bug_moves(tmp_path):
    run = tmp_path / "gpu_micro"
    for stage, m in {
        "05_stage3_pretrain": {"method": "full", "loss": {"first": 7.1, "last": 6.0}, "tokens_per_second": 900.0,
                               "ko_ppl": {"before": 120.0, "after": 80.0}, "eval_before_training": {"ko_ppl": 120.4},
                               "curves": {"step": [1], "loss": [7.1], "eval_ko_ppl": [120.4, 90.0]}},
        "06_instruction_tuning": {"loss": {"first": 5.0, "last": 4.0}, "heldout_loss": {"before": {"loss": 4.9}},
                                  "curves": {"eval_loss": [4.95]},        # another precision at step 0
                                  "dpo": {"loss": {"first": 0.6931, "last": 0.69},
                                          "heldout": {"before": {"reward_accuracy": 0.0, "margin": 0.0}},
                                          "curves": {"eval_reward_accuracy": [0.5, 0.75], "eval_margin": [0.01, 0.2],
                                                     "reward_accuracy": [0.375]}}},
        "03_stage1_contrastive": {"curves": {"loss": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]}},
    }.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "config.json").write_text("{}")
        (run / stage / "metrics.json").write_text(json.dumps(m))
        (run / stage / "DONE").write_text("{}")
    (run / "07_benchmark_eval").mkdir()                         # started, never finished
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_stages.py"), "collect", str(run)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["stage"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert list(rows) == ["03_stage1_contrastive", "05_stage3_pretrain", "06_instruction_tuning", "07_benchmark_eval"]
    assert (rows["03_stage1_contrastive"]["loss_first"], rows["03_stage1_contrastive"]["loss_last"]) == (3.0, 2.5)
    r5 = rows["05_stage3_pretrain"]
    assert r5["ko_ppl"]["before"] == 120.0 and r5["seconds"] >= 0
    assert (r5["ko_ppl_eval_before_training"], r5["ko_ppl_step0_eval"], r5["ko_ppl_step0_ok"]) == (120.4, 120.4, True)
    r6 = rows["06_instruction_tuning"]
    assert (r6["heldout_loss_before"], r6["heldout_loss_step0_eval"], r6["heldout_loss_step0_ok"]) == (4.9, 4.95, False)
    d = r6["dpo"]
    assert (d["step0_eval_reward_accuracy"], d["step0_eval_margin"], d["step0_ok"]) == (0.5, 0.01, False)
    assert d["heldout_before"] == {"reward_accuracy": 0.0, "margin": 0.0} and d["step1_train_reward_accuracy"] == 0.375
    assert rows["07_benchmark_eval"] == {"run": "gpu_micro", "stage": "07_benchmark_eval", "done": False}


@pytest.mark.slow
def test_stages_run_without_papermill(tmp_path):
    """00 and 01 of the micro profile through bench/gpu_stages.py with papermill and nbformat
    unimportable: the pipeline's checks and stage folders, the cells in a fresh process."""
    code = ("import sys, runpy\nsys.modules['papermill'] = sys.modules['nbformat'] = None\n"
            f"sys.argv = ['gpu_stages.py', 'run', {str(paths.PARAMS / 'micro.yaml')!r}, '--run', 'r', '--only', '00,01']\n"
            f"runpy.run_path({str(BENCH / 'gpu_stages.py')!r}, run_name='__main__')")
    env = dict(os.environ, KOLLAMA_OUTPUTS=str(tmp_path), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ran": ["00_toy_world", "01_vocab_merge"], "skipped": []}
    for stage in ("00_toy_world", "01_vocab_merge"):
        assert (tmp_path / "r" / stage / "DONE").exists()
        assert json.loads((tmp_path / "r" / stage / "config.json").read_text())["stage"] == stage
    m = json.loads((tmp_path / "r" / "01_vocab_merge" / "metrics.json").read_text())
    assert m["merged_vocab_size"] == m["base_vocab_size"] + m["added_pieces"]
