"""A stage's lifecycle inside its notebook (or ``python -m lib.train``): the resolved parameters
(:class:`Config`: values plus where the run and its stages live), ``resolve`` right after the
``parameters`` cell, and ``finish`` at the end::

    cfg = lib.core.stage.resolve("01_vocab_merge", globals())   # checks values, creates the stage folder,
    ...                                                          # writes config.json, seeds every RNG
    finish(cfg, metrics)                                         # metrics.json, then DONE

A stage whose ``DONE`` exists is finished: ``resolve`` refuses to touch it, the runner skips it.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import random
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lib.core import paths
from lib.core.hashing import config_hash
from lib.core.io import write_json
from lib.core.params import ParamsError, check_type, notebook_params
from lib.core.runfolder import refuse_if_locked


class Config(dict):
    """The resolved parameters of one stage: ``cfg.seed`` or ``cfg["seed"]``, plus where things live."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter '{name}' in this stage's config") from None

    @property
    def stage(self) -> str:
        return self["_stage"]

    @property
    def run_dir(self) -> Path:
        return paths.run_dir(self["run"])

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage

    @property
    def figures(self) -> Path:
        d = self.stage_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, value: str) -> Path:
        """A path parameter with placeholders expanded; relative paths are from the repo root."""
        return paths.resolve_path(value, self.run_dir)

    def input_dir(self, stage: str) -> Path:
        """The folder of an earlier, finished stage of this run."""
        d = self.run_dir / stage
        if not (d / "DONE").exists():
            raise FileNotFoundError(f"{self.stage} needs the output of {stage}, but {d} is not a "
                                    f"finished stage (no DONE). Run it first: python -m lib.pipeline "
                                    f"run PARAMS.yaml --run {self.run_dir} --only {stage[:2]}")
        return d

    def model_from(self, init_from: str) -> str:
        """The model a training stage starts from: ``auto`` = the ``model/`` of the closest earlier
        stage of this run that has one (a stage left out of the run is passed over; one that
        started but did not finish is an error); ``NN_stage`` = that stage's model; else a source."""
        if init_from != "auto":
            if re.fullmatch(r"\d\d_\w+", init_from):
                return str(self.input_dir(init_from) / "model")
            return self.source(init_from)
        for stage in sorted((d.name for d in self.run_dir.iterdir() if d.is_dir()), reverse=True):
            if stage[:2].isdigit() and stage < self.stage and stage != paths.TOY_STAGE:
                if (self.run_dir / stage / "model").exists() or not (self.run_dir / stage / "DONE").exists():
                    return str(self.input_dir(stage) / "model")
        return self.source(self["base_model"])

    def source(self, spec: str) -> str:
        """Where to load a model or tokenizer from: ``toy`` -> this run's toy base model; a local
        path (placeholders allowed) -> absolute path; anything else is a Hub id and stays."""
        if spec == "toy":
            return str(self.input_dir(paths.TOY_STAGE) / "model")
        expanded = paths.resolve_path(spec, self.run_dir)
        return str(expanded) if expanded.exists() or "{" in spec or spec.startswith((".", "/")) else spec


def resolve(stage: str, namespace: dict[str, Any]) -> Config:
    """Check this notebook's parameter values, create its stage folder, write ``config.json``, seed."""
    schema = notebook_params(stage)
    values: dict[str, Any] = {}
    for name, p in schema.items():
        if name not in namespace:
            raise ParamsError(f"{stage}: parameter '{name}' is not defined; run the parameters cell")
        values[name] = check_type(name, namespace[name], p.default, f"{stage} parameters")
    values["run"] = str(paths.run_dir(values["run"]))
    cfg = Config(values, _stage=stage)
    refuse_if_locked(cfg.run_dir)       # a notebook run by hand never writes into a busy run
    sd = cfg.stage_dir
    if (sd / "DONE").exists():
        raise FileExistsError(
            f"{sd} is a finished stage (it has DONE). Nothing was changed. To redo it, pick another "
            f"run (the 'run' parameter), or rerun with `python -m lib.pipeline ... --force`, or "
            f"delete {sd / 'DONE'} yourself.")
    prev = sd / "config.json"
    if prev.exists() and (sd / "checkpoints").exists():
        if json.loads(prev.read_text(encoding="utf-8")).get("config_hash") != config_hash(values):
            raise FileExistsError(
                f"{sd} holds checkpoints of an unfinished run with other parameters; resuming "
                f"them would mix two configs. Use another run, or `python -m lib.pipeline ... --force` "
                f"(which starts the stage afresh), or delete {sd / 'checkpoints'}.")
    sd.mkdir(parents=True, exist_ok=True)
    seed_everything(int(values.get("seed", 0)))
    write_json(sd / "config.json", {
        "stage": stage, "params": values, "config_hash": config_hash(values),
        "seed": values.get("seed"), "versions": versions(), "git": git_state(),
        "torch_threads": torch_threads(),    # CPU training numbers may depend on it (summation order)
        "cpu_capability": cpu_capability(),  # ... and do on the vector instruction set (docs/results.md)
    })
    return cfg


def seed_everything(seed: int) -> None:
    import torch  # lib.core stays importable without torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "sentencepiece", "accelerate", "peft",
                "datasets", "lm_eval", "papermill"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def torch_threads() -> int:
    """Torch's intra-op threads: on a CPU the float summation order, and so the trained weights,
    may depend on it, so a run records it (``pipeline: {torch_threads: N}`` sets it for every stage)."""
    import torch  # lib.core stays importable without torch
    return torch.get_num_threads()


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use (``AVX512``, ``AVX2``, ...): the same
    stage trains to other weights under another one (``ATEN_CPU_CAPABILITY=avx2`` pins it)."""
    import torch  # lib.core stays importable without torch
    return torch.backends.cpu.get_cpu_capability()


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def threads_env(n: int) -> Iterator[None]:
    """Processes started inside the block (a notebook's kernel) use ``n`` torch threads: torch
    takes its default from OMP_NUM_THREADS / MKL_NUM_THREADS, set here and restored after; ``n`` 0
    leaves the environment as it is."""
    before = {k: os.environ.get(k) for k in THREAD_ENV}
    if n:
        os.environ.update(dict.fromkeys(THREAD_ENV, str(n)))
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=paths.PROJ_ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def finish(cfg: Any, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` then ``DONE``: the stage is finished. Returns the metrics path."""
    sd = Path(cfg.stage_dir)
    out = write_json(sd / "metrics.json", metrics)
    write_json(sd / "DONE", {"config_hash": config_hash({k: v for k, v in cfg.items()
                                                          if not k.startswith("_")}),
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return out
