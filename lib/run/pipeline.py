"""Run the numbered notebooks in order with Papermill: the headless pipeline.

    python -m lib.pipeline run params/toy.yaml                 # everything, into outputs/toy/
    python -m lib.pipeline run params/toy.yaml --run try2      # into outputs/try2/
    python -m lib.pipeline run params/toy.yaml --from 03       # stages 03 and later
    python -m lib.pipeline run params/toy.yaml --only 07,08    # just these
    python -m lib.pipeline run params/toy.yaml --force         # redo finished stages
    python -m lib.pipeline check params/a6000.yaml             # validate only, run nothing
    python -m lib.pipeline plan params/a6000.yaml --gpu-memory 48   # memory, disk, time per stage (lib.run.plan)
    python -m lib.pipeline grid params/grids/toy_transfer.yaml      # named conditions, shared stages (lib.run.grid)
    python -m lib.pipeline contamination params/a6000.yaml          # evaluated items in the training files? (lib.eval.contamination)

Each stage runs into ``outputs/<run>/<NN_stage>/`` (executed notebook, config.json, metrics.json,
figures/, artifacts, log.txt) and is finished when its ``DONE`` exists. A finished stage whose
config is unchanged is skipped, so an interrupted run resumes where it stopped. A finished stage
whose config changed is never overwritten silently: the run stops and says so (use --force or
another --run). Once a stage has run, later stages run again too, since their inputs changed.
Exception, 07 (:data:`INCREMENTAL`): when only its task or model lists changed, it reruns keeping
its stored results and scores only what is new (a changed existing task is refused unless
``rescore_changed``); 08, computed from 07, then reruns.

``run`` first does what ``check`` does (:mod:`lib.run.check`: every problem of the selected stages,
one line each, before any work), then holds the run folder's lock (:mod:`lib.core.runfolder`) while it
runs. A failing stage ends in one ``error:`` line naming the stage, the cause in words
(:mod:`lib.run.failures`: a full disk whatever library hit it, with the run folder's free space)
and the notebook and log to read; the command exits 1, or 130 / 143 when interrupted by SIGINT /
SIGTERM (rerun it to resume).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lib.core import paths
from lib.core.hashing import config_hash
from lib.core.io import read_json
from lib.core.params import ParamsError, Profile, load_profile, stage_params, validate_profile
from lib.core.runfolder import run_folder, run_lock
from lib.core.stage import threads_env
from lib.run import failures, report
from lib.run.check import check_profile
from lib.run.plan import check_fits, device_gib
from lib.run.stages import select_stages


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


# Stages that keep their finished work and add to it when only these parameters changed (07:
# results are stored per model, task and settings), and stages recomputed from them (08).
INCREMENTAL = {"07_benchmark_eval": ("tasks", "baselines", "stages", "include_checkpoints",
                                     "rescore_changed", "batch_size", "device", "extra_tasks", "extra_metric",
                                     "extra_checkpoints", "contamination_ngram")}
DERIVED = ("08_agreement_analysis",)


@dataclass
class Plan:
    stage: str
    params: dict
    action: str        # "run" | "skip"
    fresh: bool = False  # clear the stage folder first (--force, or an earlier stage ran): no resume
    incremental: bool = False  # a finished stage adds to its results (only its DONE is removed)


def incremental_change(stage: str, done: Path, params: dict) -> str | None:
    """Why a finished incremental stage cannot simply add to its results (None: it can): a
    parameter outside :data:`INCREMENTAL` changed, or an existing task changed without
    ``rescore_changed``."""
    cfg = done.parent / "config.json"
    if not cfg.is_file():
        return "its config.json is missing"
    old = read_json(cfg).get("params", {})
    changed = sorted(k for k in set(old) | set(params) if k != "run" and old.get(k) != params.get(k))
    fixed = [k for k in changed if k not in INCREMENTAL[stage]]
    if fixed:
        return f"its parameters {', '.join(fixed)} changed since it finished"
    edited = sorted(n for n in set(old.get("tasks", {})) & set(params.get("tasks", {}))
                    if old["tasks"][n] != params["tasks"][n])
    if edited and not params.get("rescore_changed"):
        return (f"the spec of its tasks {', '.join(edited)} changed (set rescore_changed: true to "
                "re-score only those)")
    return None


def plan_run(prof: Profile, run: str | Path, stages: list[str], force: bool = False) -> list[Plan]:
    """Decide, before anything runs, which stages run and which are skipped; refuse overwrites."""
    validate_profile(prof, stages)
    plans, upstream_ran = [], False
    for stage in stages:
        params = stage_params(prof, stage, run)
        done = paths.stage_dir(run, stage) / "DONE"
        if done.exists() and not force:
            same = read_json(done).get("config_hash") == config_hash(params)
            if same and not upstream_ran:
                plans.append(Plan(stage, params, "skip"))
                continue
            if stage in INCREMENTAL:
                why = incremental_change(stage, done, params)
                if why is None:
                    plans.append(Plan(stage, params, "run", incremental=True))
                    upstream_ran = True
                    continue
                raise ParamsError(f"{done.parent} is finished but {why}. Nothing was run. Use --force "
                                  f"to redo it, or --run NEW_NAME for a separate run.")
            if stage in DERIVED and upstream_ran:     # recomputed from the stage that just added results
                plans.append(Plan(stage, params, "run", fresh=True))
                continue
            why = ("an earlier stage runs again in this run, so its inputs change" if same
                   else "its parameters changed since it finished")
            raise ParamsError(f"{done.parent} is finished but {why}. Nothing was run. Use --force "
                              f"to redo it, or --run NEW_NAME for a separate run.")
        # resume partial work only in the first stage to run: after it, inputs have changed
        plans.append(Plan(stage, params, "run", fresh=force or upstream_ran))
        upstream_ran = True
    return plans


def link_shared_stages(prof: Profile, run: str | Path) -> list[str]:
    """``pipeline: {share: {run: toy, stages: [00, 01, 02]}}``: reuse another run's finished
    stages (linked, not copied) when their parameters are identical, e.g. an ablation that only
    changes stage 03 need not rebuild the toy world. Anything else is a clear error."""
    share = prof.sections.get("pipeline", {}).get("share")
    if not share:
        return []
    src_run = paths.run_dir(str(share["run"]))
    linked = []
    for stage in select_stages(prof, only=",".join(str(s) for s in share["stages"])):
        src, dst = src_run / stage, paths.stage_dir(run, stage)
        done = src / "DONE"
        if not done.exists():
            raise ParamsError(f"{prof.path}: shares {stage} with run {src_run.name}, but {src} is not "
                              f"finished; run that profile first")
        if read_json(done).get("config_hash") != config_hash(stage_params(prof, stage, run)):
            raise ParamsError(f"{prof.path}: shares {stage} with run {src_run.name}, but the parameters "
                              f"of {stage} differ between the two profiles; remove it from pipeline.share")
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if dst.exists() or dst.is_symlink():
            raise ParamsError(f"{dst} exists and is not a link to {src}; use another --run")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src.resolve(), target_is_directory=True)
        linked.append(stage)
    return linked


def run_stage(plan: Plan, run: str | Path, progress: bool = True, threads: int = 0) -> Path:
    """Execute one notebook into its stage folder, its kernel on ``threads`` torch threads (0:
    torch's default; the profile's ``pipeline: {torch_threads: N}``); raise StageFailed with one
    line naming the stage, the cause in words (the failing cell, a dead kernel, a full disk, ...)
    and where to read more. The log is appended to, so an earlier attempt's traceback is kept."""
    import papermill as pm  # notebook packages: ~1.5 s to import, optional; only to run a stage
    sd = paths.stage_dir(run, plan.stage)
    if sd.is_symlink():                     # a stage shared from another run: never touch the original
        sd.unlink()
    elif plan.fresh and sd.exists():        # --force: redo from scratch, never resume old checkpoints
        shutil.rmtree(sd)
    elif plan.incremental:                  # keep the stored results; the notebook adds to them
        (sd / "DONE").unlink(missing_ok=True)
    sd.mkdir(parents=True, exist_ok=True)
    out_nb = sd / f"{plan.stage}.ipynb"
    failures.atomic_notebooks(sd)           # the kept notebook is always a complete save
    log_path = sd / "log.txt"
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} PID {os.getpid()}: {plan.stage}\n")
        log.flush()
        try:
            with failures.output_into(log), threads_env(threads):
                pm.execute_notebook(
                    str(paths.notebook_path(plan.stage)), str(out_nb), parameters=plan.params,
                    kernel_name="python3", cwd=str(paths.NOTEBOOKS), progress_bar=progress,
                    stdout_file=log, stderr_file=log, request_save_on_cell_execute=True)
        except (Exception, KeyboardInterrupt) as e:
            why = failures.cause(e, paths.run_dir(str(run)))
            kept = f"notebook {out_nb}, " if out_nb.exists() else ""
            raise StageFailed(f"{plan.stage} failed{' ' if why.startswith('in cell') else ': '}{why} "
                              f"({kept}log {log_path})") from e
    if not (sd / "DONE").exists():
        raise StageFailed(f"{plan.stage} ran to the end but wrote no DONE; its last cell must call "
                          f"lib.core.io.finish(cfg, metrics). Notebook: {out_nb}")
    return sd


def check_run(prof: Profile, run: str, stages: list[str]) -> None:
    """Everything :mod:`lib.run.check` finds for these stages, as one ParamsError; nothing is written."""
    problems = check_profile(prof, stages, run)
    if problems:
        raise ParamsError.of(problems)


def run_pipeline(params_file: str | Path, run: str | None = None, start: str | None = None,
                 only: str | None = None, force: bool = False, progress: bool = True,
                 gpu_memory: float | None = None) -> list[Plan]:
    """Check a profile, then run it; returns the plans (what ran, what was skipped)."""
    prof = load_profile(params_file)
    run = str(run or prof.name)
    rd = run_folder(run)
    stages = select_stages(prof, start, only)
    check_run(prof, run, stages)
    with run_lock(rd, f"python -m lib.pipeline run {prof.path.name} --run {run}"):
        link_shared_stages(prof, run)
        plans = plan_run(prof, run, stages, force)
        gpu = gpu_memory or device_gib()   # on a GPU machine, refuse a stage that cannot fit
        if gpu:
            check_fits(prof, [p.stage for p in plans if p.action == "run"], run, gpu)
        shutil.copy(prof.path, rd / f"params_{prof.path.name}")
        bar = tqdm(plans, desc=f"run {rd.name}", unit="stage", disable=not progress, position=0)
        failed = False
        try:
            for plan in bar:
                bar.set_postfix_str(plan.stage)
                if plan.action == "skip":
                    tqdm.write(f"  {plan.stage}: finished with the same config, skipped")
                    continue
                t0 = time.time()
                run_stage(plan, run, progress=False, threads=prof.torch_threads())
                tqdm.write(f"  {plan.stage}: done in {time.time() - t0:.1f}s -> {paths.stage_dir(run, plan.stage)}")
        except BaseException:
            failed = True
            raise
        finally:            # the report is written after a failure too, showing what finished
            try:
                tqdm.write(f"  report: {report.write_report(rd)} (+ report.html)")
            except Exception as e:      # never let the report hide the stage's own error
                if not failed:
                    raise
                tqdm.write(f"  report not written ({failures.cause(e, rd)})")
    return plans
