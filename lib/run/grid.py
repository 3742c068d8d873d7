"""A grid of named conditions over one profile, with every identical stage run once.

    python -m lib.pipeline grid params/grids/toy_transfer.yaml            # run, resume, tabulate
    python -m lib.pipeline grid params/grids/toy_transfer.yaml --only recipe,word

A grid file names a base profile, overlays applied to every condition (``defaults``), and the
conditions, each a small overlay of sections (the same shape as a profile)::

    base: ../toy.yaml
    defaults: {07_benchmark_eval: {include_checkpoints: false}}
    conditions:
      recipe: {}
      no_stage1: {pipeline: {skip: ["03"]}}
      word: {03_stage1_contrastive: {objective: word}}

Each condition becomes ``outputs/<grid>/conditions/<name>.yaml`` (``extends:`` the base) and runs
as ``outputs/<grid>/<name>/``. A stage is *the same* in two conditions when its parameters and
those of every stage before it (and which stages run) are identical: its chain id. The first
condition that runs a chain id owns the folder; later conditions link to it instead of running it
again (the toy world and 01-02 once for the whole grid; 03 once for every condition that changes
only 04 or later). A finished condition is not rerun, and an interrupted grid resumes.

``seeds: [1, 2, 3]`` replicates every condition once per seed (lib.run.gridseeds): each replicate
sets ``seed`` in the stages that train after the instrument (03-06; ``seed_stages:`` to choose)
and runs as ``outputs/<grid>/<name>-s<seed>/``; 00 (the toy world and its base model) and 01-02
keep the profile's seed, so they are one instrument, run once for the whole grid, and the chain
ids share the rest seed by seed. ``--only`` names conditions (every seed of each) or replicates.
``reference: <condition>`` adds the paired differences against it on the same seeds.

Before anything runs (``--slurm`` too) the grid file is read strictly and every condition to run
is checked as ``check`` checks a profile (:func:`checked`): every problem at once, at the grid
file's line, with the conditions it concerns.

After the runs, ``grid.md`` / ``grid.json`` hold, per condition and stage model, the knowledge
cell's transfer ratio and kappa with 95% intervals (from each condition's 08 ``summary.json``),
the controls first; ``figures/grid.png`` draws each condition's stage models (03 to the last)
with the controls as reference bands (lib.run.gridtable). With seeds: the mean over seeds with a
run-level 95% t-interval, each seed's value, and the differences against ``reference``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lib.core import paths
from lib.core.hashing import config_hash
from lib.core.io import read_json, write_json, write_text
from lib.core.params import ParamsError, Profile, load_profile, read_yaml, stage_params
from lib.core.runfolder import BadRunName, run_folder
from lib.run import gridseeds
from lib.run.check import check_profile
# the table and figure (lib.run.gridtable), importable from here as before
from lib.run.gridtable import (CELL, collect, figure, final_of_conditions, markdown,  # noqa: F401
                               stage_rows, write_outputs)
from lib.run.pipeline import run_pipeline
from lib.run.stages import select_stages

GRID_KEYS = ("base", "defaults", "conditions", "name", "slurm", *gridseeds.KEYS)


@dataclass
class Grid:
    path: Path
    name: str
    base: Path
    defaults: dict
    conditions: dict[str, dict]
    slurm: dict
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)     # key path -> line in path
    seeds: list[int] = field(default_factory=list)                      # [] : one run per condition
    seed_stages: tuple[str, ...] = gridseeds.SEED_STAGES
    reference: str | None = None

    @property
    def root(self) -> Path:
        return paths.run_dir(self.name)

    @property
    def runs(self) -> dict[str, tuple[str, int | None]]:
        """Run name -> (condition, seed): the conditions, or with seeds their replicates."""
        return gridseeds.runs(self.conditions, self.seeds)

    def where(self, *key: str) -> str:
        """``file:line`` of a key of the grid file (its first line when the key is not written)."""
        return f"{self.path}:{self.lines.get(key, 1)}"


def load_grid(path: str | Path) -> Grid:
    """Read a grid file strictly (lib.core.params.read_yaml: duplicate keys, bad YAML) and refuse,
    all at once and at their lines, unknown keys, a missing base, a ``name`` that would leave
    ``outputs/``, bad condition names and sections that are not mappings; writes nothing."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ParamsError(f"grid file not found: {path}")
    raw, lines = read_yaml(path, "grid file", "'base: ../toy.yaml' and 'conditions:'")
    problems: list[str] = []

    def at(*key: str) -> str:
        return f"{path}:{lines.get(key, 1)}"
    for key in raw:
        if key not in GRID_KEYS:
            problems.append(f"{at(key)}: unknown key {key!r} (a grid has {', '.join(GRID_KEYS)})")
    base = raw.get("base")
    if not base or not isinstance(base, str):
        problems.append(f"{at('base')}: 'base' must name the profile the conditions overlay (e.g. ../toy.yaml)")
    elif not (path.parent / base).resolve().is_file():
        problems.append(f"{at('base')}: base profile not found: {(path.parent / base).resolve()}")
    name = str(raw.get("name") or path.stem)
    try:
        if Path(name).expanduser().is_absolute():
            raise BadRunName("an absolute path")
        run_folder(name)
    except BadRunName:
        problems.append(f"{at('name')}: name {name!r} must be a folder name under {paths.OUTPUTS.resolve()} "
                        f"(no '..', not absolute): the grid writes outputs/<name>/")
    for key in ("defaults", "slurm"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            problems.append(f"{at(key)}: '{key}' must be a mapping, got {raw[key]!r}")
    if isinstance(raw.get("defaults"), dict):
        problems += _section_problems(raw["defaults"], ("defaults",), at)
    conds = raw.get("conditions") or {}
    if not isinstance(conds, dict) or not conds:
        problems.append(f"{at('conditions')}: 'conditions' must map at least one name to an overlay")
        conds = {}
    for cname, over in conds.items():
        if not str(cname).replace("_", "").replace("-", "").isalnum():
            problems.append(f"{at('conditions', str(cname))}: condition name {cname!r} must be letters, "
                            f"digits, _ or -")
        if over is not None and not isinstance(over, dict):
            problems.append(f"{at('conditions', str(cname))}: condition {cname!r} must be a mapping of "
                            f"sections, got {over!r}")
        elif over:
            problems += _section_problems(over, ("conditions", str(cname)), at)
    problems += gridseeds.problems(raw, at)
    if problems:
        raise ParamsError.of(problems)
    return Grid(path, name, (path.parent / base).resolve(),
                raw.get("defaults") or {}, {str(k): v or {} for k, v in conds.items()},
                raw.get("slurm") or {}, lines, list(raw.get("seeds") or []),
                gridseeds.chosen_stages(raw.get("seed_stages")), raw.get("reference"))


def _section_problems(layer: dict, prefix: tuple[str, ...], at) -> list[str]:
    """Each section of an overlay must be a mapping of key: value (as in a profile)."""
    return [f"{at(*prefix, str(section))}: section '{section}' must be a mapping of key: value, got {values!r}"
            for section, values in layer.items() if values is not None and not isinstance(values, dict)]


def selected(grid: Grid, only: str | None) -> list[str]:
    """The runs ``--only`` names (all when it is not given): a condition (with seeds, each of its
    replicates) or a single replicate (``recipe-s2``: a Slurm task's own); an empty or unknown name
    is an error."""
    if only is None:
        return list(grid.runs)
    names = list(dict.fromkeys(n.strip() for n in only.split(",") if n.strip()))
    if not names:
        raise ParamsError(f"--only {only!r} names no condition; give names such as --only "
                          f"{','.join(list(grid.conditions)[:2])} (conditions: {', '.join(grid.conditions)})")
    unknown = [n for n in names if n not in grid.conditions and n not in grid.runs]
    if unknown:
        raise ParamsError(f"--only {only}: {grid.path} has no condition {', '.join(unknown)} "
                          f"(conditions: {', '.join(grid.conditions)})")
    return list(dict.fromkeys(r for n in names for r, (c, _) in grid.runs.items() if n in (c, r)))


def condition_profile(grid: Grid, name: str) -> Profile:
    """The run's profile (a condition, or one of its replicates), its keys located in the grid
    file (the condition's own line, else the ``defaults`` line, else for a seed the ``seeds`` line)
    rather than in the generated ``conditions/<name>.yaml``."""
    f = condition_file(grid, name)
    prof = load_profile(f)
    cond, seed = grid.runs[name]
    for (section, key), origin in list(prof.origin.items()):
        if origin != f:
            continue
        tail = (section,) if key is None else (section, key)
        line = grid.lines.get(("conditions", cond, *tail)) or grid.lines.get(("defaults", *tail))
        if not line and seed is not None and section in grid.seed_stages and key in ("seed", None):
            line = grid.lines.get(("seeds",))
        if line:
            prof.origin[(section, key)] = grid.path
            prof.lines[(section, key)] = line
    return prof


def check_grid(grid: Grid, names: list[str]) -> list[str]:
    """Every problem ``check`` finds in the named runs, one line each at the grid file's (or the
    base profile's) line, with the conditions it applies to; [] when all are fine."""
    found: dict[str, list[str]] = {}
    for run in names:
        prof = condition_profile(grid, run)
        cond = grid.runs[run][0]
        for p in check_profile(prof, select_stages(prof), f"{grid.name}/{run}"):
            if cond not in found.setdefault(p, []):
                found[p].append(cond)
    def which(ns: list[str]) -> str:
        if len(ns) == len(grid.conditions) > 1:
            return "every condition"
        return f"condition{'s' if len(ns) > 1 else ''} {', '.join(ns)}"
    return [f"{p} [{which(ns)}]" for p, ns in found.items()]


def overlay(grid: Grid, name: str) -> dict:
    """``defaults`` then the condition, merged section by section (a key in both: the condition's);
    for a replicate then its seed in the seed stages."""
    cond, seed = grid.runs[name]
    out: dict[str, dict] = {}
    for layer in (grid.defaults, grid.conditions[cond], gridseeds.seed_overlay(seed, grid.seed_stages)):
        for section, values in layer.items():
            out.setdefault(str(section), {}).update(values or {})
    return out


def condition_file(grid: Grid, name: str) -> Path:
    """Write (atomically, only when changed) the run's profile; returns its path."""
    f = grid.root / "conditions" / f"{name}.yaml"
    cond, seed = grid.runs[name]
    what = f"condition {cond!r}" + ("" if seed is None else f", seed {seed},")
    text = (f"# {what} of grid {grid.path.name}: written by lib.run.grid, do not edit\n"
            + yaml.safe_dump({"extends": str(grid.base), **overlay(grid, name)}, sort_keys=False,
                             allow_unicode=True))
    if not f.exists() or f.read_text(encoding="utf-8") != text:
        write_text(f, text)
    return f


def chain_ids(profile_file: Path, run: str) -> dict[str, str]:
    """Per stage the condition runs, a hash of its own and every earlier stage's parameters."""
    prof = load_profile(profile_file)
    out, chain = {}, []
    for stage in select_stages(prof):
        # a wrong type is check's to report (for the conditions that run): the default stands in
        chain.append((stage, config_hash(stage_params(prof, stage, run, problems=[]))))
        out[stage] = hashlib.sha256(json.dumps(chain).encode()).hexdigest()[:16]
    return out


def plan(grid: Grid, names: list[str] | None = None, among: list[str] | None = None) -> dict[str, dict]:
    """Per run (a condition, or with seeds a replicate): its profile, run, chain ids, and for each
    stage the owner run, chosen among ``among`` (default: every run); ``names`` must be runs."""
    plans, owners = {}, {}
    for name in among or grid.runs:
        f = condition_file(grid, name)
        run = f"{grid.name}/{name}"
        ids = chain_ids(f, run)
        own = {}
        for stage, cid in ids.items():
            owners.setdefault(cid, name)
            own[stage] = owners[cid]
        plans[name] = {"file": f, "run": run, "ids": ids, "owner": own}
    if names:
        unknown = [n for n in names if n not in plans]
        if unknown:
            raise ParamsError(f"{grid.path}: no run {', '.join(unknown)} (runs: {', '.join(plans)})")
    return plans


def stage_finished(stage_dir: Path, params_hash: str) -> bool:
    done = stage_dir / "DONE"
    return done.exists() and read_json(done).get("config_hash") == params_hash


def link_shared(grid: Grid, plans: dict, name: str) -> list[str]:
    """Link the condition's stages that another condition owns and that some condition with the
    same chain id has finished (the owner first: with ``--only`` it may not be among those run); a
    prefix."""
    p, linked = plans[name], []
    prof = load_profile(p["file"])
    for stage, owner in p["owner"].items():
        if owner == name:
            break
        want = config_hash(stage_params(prof, stage, p["run"]))
        sources = [owner] + [n for n, q in plans.items() if n not in (owner, name)
                             and q["ids"].get(stage) == p["ids"][stage]]
        src = next((paths.stage_dir(plans[n]["run"], stage) for n in sources
                    if stage_finished(paths.stage_dir(plans[n]["run"], stage), want)), None)
        if src is None:
            break                                   # nobody has run it yet: run it here
        dst = paths.stage_dir(p["run"], stage)
        if dst.is_symlink() and dst.resolve() == src.resolve():
            linked.append(stage)
            continue
        if dst.exists() or dst.is_symlink():
            break                                   # this condition ran it itself earlier: keep that
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.path.relpath(src, dst.parent), target_is_directory=True)
        linked.append(stage)
    return linked


def condition_done(plans: dict, name: str) -> bool:
    p = plans[name]
    prof = load_profile(p["file"])
    return all(stage_finished(paths.stage_dir(p["run"], s), config_hash(stage_params(prof, s, p["run"])))
               for s in p["ids"])


def checked(grid_file: str | Path, only: str | None = None) -> tuple[Grid, list[str]]:
    """The grid and the runs (conditions, or their replicates) to run, once the file, ``--only``
    and ``check`` on every one of them have passed; else one ParamsError listing every problem
    (nothing has run)."""
    grid = load_grid(grid_file)
    names = selected(grid, only)
    problems = check_grid(grid, names)
    if problems:
        raise ParamsError.of(problems)
    return grid, names


def run_grid(grid_file: str | Path, only: str | None = None, progress: bool = True) -> dict:
    """Check every (or the ``only``) condition (:func:`checked`), then run them, sharing stages;
    then write grid.md/json + figure."""
    grid, names = checked(grid_file, only)
    plans = plan(grid, names)
    log = {}
    for name in names:
        t0 = time.time()
        if condition_done(plans, name):
            print(f"[grid {grid.name}] {name}: finished, not rerun")
            log[name] = {"ran": [], "linked": [], "seconds": 0.0}
            continue
        linked = link_shared(grid, plans, name)
        print(f"[grid {grid.name}] {name}: shares {', '.join(s[:2] for s in linked) or 'nothing'}; running the rest")
        done = run_pipeline(plans[name]["file"], run=plans[name]["run"], progress=progress)
        log[name] = {"ran": [p.stage for p in done if p.action == "run"], "linked": linked,
                     "seconds": round(time.time() - t0, 1)}
    write_json(grid.root / "grid_runs.json", {"conditions": log, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    table = collect(grid, plans)
    write_outputs(grid, table)
    return {"runs": log, "table": table}
