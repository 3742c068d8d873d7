"""A grid as Slurm jobs: ``python -m lib.pipeline grid GRID --slurm`` writes the scripts and prints
the submit command; it submits nothing.

Two scripts under ``outputs/<grid>/slurm/``:

- ``shared.sbatch``: every stage that two or more conditions share (by chain id, see lib.run.grid), run
  once in its owner's folder, in order: the toy world / 01 / 02, and 03 for the conditions that
  change only later stages;
- ``array.sbatch``: a job array, one condition a task (with ``seeds:``, one replicate a task,
  ``<condition>-s<seed>``), after ``shared`` (``--dependency=afterok``):
  it links the shared stages, trains its own stages with ``accelerate launch -m lib.train`` (the
  ``accelerate_config`` of the grid's ``slurm:`` section, DDP by default) and runs its notebooks
  (07, 08) through the pipeline. A stage already finished is skipped, so a resubmitted task resumes.

When every task has finished, ``python -m lib.pipeline grid GRID`` runs nothing more and writes
``grid.md``. The grid's ``slurm:`` section sets ``partition``, ``gpus`` (per task), ``cpus``,
``time``, ``mem``, ``accelerate_config``, ``setup`` (a line run first, e.g. activating the venv).
"""
from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

from lib.core import paths
from lib.core.io import write_text
from lib.core.params import ParamsError
from lib.run.grid import Grid, checked, plan

TRAINING = {"03", "04", "05", "06"}
DEFAULTS = {"partition": "", "gpus": 1, "cpus": 8, "time": "48:00:00", "mem": "64G",
            "accelerate_config": "params/accelerate/ddp.yaml", "setup": "source .venv/bin/activate"}


def _header(grid: Grid, opts: dict, name: str, extra: list[str]) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={grid.name}-{name}", f"#SBATCH --gres=gpu:{opts['gpus']}",
             f"#SBATCH --cpus-per-task={opts['cpus']}", f"#SBATCH --time={opts['time']}",
             f"#SBATCH --mem={opts['mem']}",
             f"#SBATCH --output={grid.root / 'slurm' / ('%x_%A_%a.out' if extra else '%x_%j.out')}"]
    if opts["partition"]:
        lines.append(f"#SBATCH --partition={opts['partition']}")
    lines += extra + ["# written by lib.run.gridslurm: do not edit, render again", "set -euo pipefail",
                      f"cd {shlex.quote(str(paths.PROJ_ROOT))}", opts["setup"] or ":"]
    return lines


def _stage_steps(grid: Grid, cond_var: str, stage: str, opts: dict, cond_file: str, run: str) -> list[str]:
    """Shell lines that finish one stage of a condition unless it is finished already."""
    g = shlex.quote(str(grid.path))
    nn = stage[:2]
    if nn in TRAINING:
        gpus = int(opts["gpus"])
        launch = (f"accelerate launch --config_file {opts['accelerate_config']} --num_processes {gpus} "
                  f"-m lib.train {nn} {cond_file} --run {run}")
    else:
        launch = f"python -m lib.pipeline run {cond_file} --run {run} --only {nn}"
    return [f"python -m lib.cli.grid done {g} {cond_var} {nn} || {launch}"]


def render(grid_file: str | Path, only: str | None = None) -> dict[str, Path]:
    """Check the grid as a run would (every condition, or the ``only`` ones: lib.run.grid.checked),
    then write shared.sbatch and array.sbatch for those runs (conditions, or with seeds their
    replicates); return their paths and the submit command."""
    grid, names = checked(grid_file, only)
    unknown = [k for k in grid.slurm if k not in DEFAULTS]
    if unknown:
        raise ParamsError.of([f"{grid.where('slurm', str(k))}: slurm.{k} is not a setting (settings: "
                              f"{', '.join(DEFAULTS)})" for k in unknown])
    opts = {**DEFAULTS, **grid.slurm}
    # shared stages and their owners among the runs submitted (lib.cli.grid link finds them)
    plans = plan(grid, among=names)
    users = Counter(cid for p in plans.values() for cid in p["ids"].values())
    g = shlex.quote(str(grid.path))
    shared = _header(grid, opts, "shared", [])
    shared_stages: dict[str, list[str]] = {}
    for name, p in plans.items():
        own = [s for s, cid in p["ids"].items() if p["owner"][s] == name and users[cid] > 1]
        if not own:
            continue
        shared_stages[name] = own
        cf, run = shlex.quote(str(p["file"])), shlex.quote(p["run"])
        shared.append(f"# {name}: {', '.join(own)} (shared with {max(users[p['ids'][s]] for s in own) - 1} other condition(s))")
        shared.append(f"python -m lib.cli.grid link {g} {name}")
        for stage in own:
            shared += _stage_steps(grid, name, stage, opts, cf, run)
    names = list(plans)
    array = _header(grid, opts, "array", [f"#SBATCH --array=0-{len(names) - 1}"])
    array += [f"CONDITIONS=({' '.join(names)})", "COND=${CONDITIONS[$SLURM_ARRAY_TASK_ID]}",
              f"COND_FILE={shlex.quote(str(grid.root / 'conditions'))}/$COND.yaml",
              f"RUN={grid.name}/$COND", f"python -m lib.cli.grid link {g} $COND", 'case "$COND" in']
    for name, p in plans.items():
        array.append(f"  {name})")
        for stage in p["ids"]:
            if users[p["ids"][stage]] > 1 and p["owner"][stage] != name:
                continue                         # linked from its owner (run by shared.sbatch)
            if name in shared_stages and stage in shared_stages[name]:
                continue
            array += ["    " + x for x in _stage_steps(grid, "$COND", stage, opts, '"$COND_FILE"', '"$RUN"')]
        array.append("    ;;")
    array += ["esac", f"python -m lib.pipeline grid {g} --only $COND    # verifies: runs nothing left, updates grid.md"]
    out = grid.root / "slurm"
    files = {"shared": write_text(out / "shared.sbatch", "\n".join(shared) + "\n"),
             "array": write_text(out / "array.sbatch", "\n".join(array) + "\n")}
    for f in files.values():
        f.chmod(0o755)
    files["submit"] = (f"SHARED=$(sbatch --parsable {files['shared']}) && "
                       f"sbatch --dependency=afterok:$SHARED {files['array']}")
    return files
