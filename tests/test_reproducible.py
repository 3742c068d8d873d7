"""The setting the toy profiles promise (``pipeline: {torch_threads: 1}``): the runner gives every
notebook's kernel one torch thread, and the same stage trained twice is bit-identical."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import EN_LINES, KO_LINES
from safetensors.torch import load_file

from lib.core import paths
from lib.core.params import ParamsError, load_profile, validate_profile
from lib.core.stage import THREAD_ENV, threads_env
from lib.run.pipeline import run_pipeline


def test_toy_profiles_ask_for_one_thread_and_bad_values_are_refused(tmp_path):
    assert load_profile(paths.PARAMS / "toy.yaml").torch_threads() == 1
    assert load_profile(paths.PARAMS / "micro.yaml").torch_threads() == 1
    f = tmp_path / "p.yaml"
    for bad in ("-1", "two", "true", "1.5"):
        f.write_text(f"extends: {paths.PARAMS / 'toy.yaml'}\npipeline:\n  torch_threads: {bad}\n")
        with pytest.raises(ParamsError, match=r"p.yaml:3: pipeline.torch_threads must be an integer >= 0"):
            validate_profile(load_profile(f), [])
    f.write_text(f"extends: {paths.PARAMS / 'toy.yaml'}\npipeline:\n  torch_threads: 0\n")
    assert load_profile(f).torch_threads() == 0                       # torch's default


def test_threads_env_sets_and_restores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with threads_env(1):
        assert [os.environ[k] for k in THREAD_ENV] == ["1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    with threads_env(0):                                               # 0: as it is
        assert os.environ["OMP_NUM_THREADS"] == "7"


@pytest.mark.slow
def test_a_stage_trained_twice_at_one_thread_is_bit_identical(tmp_path, tiny_assets):
    """Stage 3 (full method, the tiny model) through the runner (a notebook whose kernel gets one
    thread while this process has torch's default) and through python -m lib.train: every tensor
    of the two saved models is equal, and so are the losses."""
    ko, en = tmp_path / "ko.txt", tmp_path / "en.txt"
    ko.write_text("\n".join(KO_LINES * 3) + "\n", encoding="utf-8")
    en.write_text("\n".join(EN_LINES * 3) + "\n", encoding="utf-8")
    f = tmp_path / "p.yaml"
    f.write_text(
        f"pipeline:\n  torch_threads: 1\ncommon:\n  base_model: {tiny_assets['model']}\n  seed: 5\n"
        f"05_stage3_pretrain:\n  init_from: {tiny_assets['model']}\n  ko_text: {ko}\n  en_text: {en}\n"
        f"  heldout_ko: {tiny_assets['sample_ko']}\n  heldout_en: {tiny_assets['sample_en']}\n  max_eval_lines: 10\n"
        f"  block_size: 32\n  batch_size: 8\n  steps: 6\n  save_every: 0\n  eval_every: 0\n  lr: 5.0e-3\n"
        f"  report_to: none\n", encoding="utf-8")
    run_pipeline(f, run=str(tmp_path / "one"), only="05", progress=False)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}      # torch's default here
    r = subprocess.run([sys.executable, "-m", "lib.train", "05", str(f), "--run", str(tmp_path / "two")],
                       capture_output=True, text=True, env=env, cwd=paths.PROJ_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    stage = "05_stage3_pretrain"
    one, two = (load_file(tmp_path / run / stage / "model" / "model.safetensors") for run in ("one", "two"))
    start = load_file(tiny_assets["model"] / "model.safetensors")
    assert one.keys() == two.keys() and any(not torch.equal(one[k], start[k]) for k in one)
    assert [k for k in one if not torch.equal(one[k], two[k])] == []
    m1, m2 = (json.loads((tmp_path / run / stage / "metrics.json").read_text()) for run in ("one", "two"))
    assert m1["curves"]["loss"] == m2["curves"]["loss"]
    for run in ("one", "two"):
        assert json.loads((tmp_path / run / stage / "config.json").read_text())["torch_threads"] == 1
