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

Before anything runs (``--slurm`` too) the grid file is read strictly and every condition to run
is checked as ``check`` checks a profile (:func:`checked`): every problem at once, at the grid
file's line, with the conditions it concerns.

After the runs, ``grid.md`` / ``grid.json`` hold, per condition and stage model, the knowledge
cell's transfer ratio and kappa with 95% intervals (from each condition's 08 ``summary.json``),
the controls first; ``figures/grid.png`` draws each condition's stage models (03 to the last)
with the controls as reference bands.
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
from lib.core.plots import save
from lib.core.runfolder import BadRunName, run_folder
from lib.core.stats import fmt_ci
from lib.run.check import check_profile
from lib.run.pipeline import run_pipeline
from lib.run.stages import select_stages

CELL = "knowledge"


GRID_KEYS = ("base", "defaults", "conditions", "name", "slurm")


@dataclass
class Grid:
    path: Path
    name: str
    base: Path
    defaults: dict
    conditions: dict[str, dict]
    slurm: dict
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)     # key path -> line in path

    @property
    def root(self) -> Path:
        return paths.run_dir(self.name)

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
    if problems:
        raise ParamsError.of(problems)
    return Grid(path, name, (path.parent / base).resolve(),
                raw.get("defaults") or {}, {str(k): v or {} for k, v in conds.items()},
                raw.get("slurm") or {}, lines)


def _section_problems(layer: dict, prefix: tuple[str, ...], at) -> list[str]:
    """Each section of an overlay must be a mapping of key: value (as in a profile)."""
    return [f"{at(*prefix, str(section))}: section '{section}' must be a mapping of key: value, got {values!r}"
            for section, values in layer.items() if values is not None and not isinstance(values, dict)]


def selected(grid: Grid, only: str | None) -> list[str]:
    """The conditions ``--only`` names (all when it is not given); an empty or unknown name is an error."""
    if only is None:
        return list(grid.conditions)
    names = list(dict.fromkeys(n.strip() for n in only.split(",") if n.strip()))
    if not names:
        raise ParamsError(f"--only {only!r} names no condition; give names such as --only "
                          f"{','.join(list(grid.conditions)[:2])} (conditions: {', '.join(grid.conditions)})")
    unknown = [n for n in names if n not in grid.conditions]
    if unknown:
        raise ParamsError(f"--only {only}: {grid.path} has no condition {', '.join(unknown)} "
                          f"(conditions: {', '.join(grid.conditions)})")
    return names


def condition_profile(grid: Grid, name: str) -> Profile:
    """The condition's profile, its keys located in the grid file (the condition's own line, else
    the ``defaults`` line) rather than in the generated ``conditions/<name>.yaml``."""
    f = condition_file(grid, name)
    prof = load_profile(f)
    for (section, key), origin in list(prof.origin.items()):
        if origin != f:
            continue
        tail = (section,) if key is None else (section, key)
        line = grid.lines.get(("conditions", name, *tail)) or grid.lines.get(("defaults", *tail))
        if line:
            prof.origin[(section, key)] = grid.path
            prof.lines[(section, key)] = line
    return prof


def check_grid(grid: Grid, names: list[str]) -> list[str]:
    """Every problem ``check`` finds in the named conditions, one line each at the grid file's (or
    the base profile's) line, with the conditions it applies to; [] when all are fine."""
    found: dict[str, list[str]] = {}
    for name in names:
        prof = condition_profile(grid, name)
        for p in check_profile(prof, select_stages(prof), f"{grid.name}/{name}"):
            found.setdefault(p, []).append(name)
    def which(ns: list[str]) -> str:
        if len(ns) == len(grid.conditions) > 1:
            return "every condition"
        return f"condition{'s' if len(ns) > 1 else ''} {', '.join(ns)}"
    return [f"{p} [{which(ns)}]" for p, ns in found.items()]


def overlay(grid: Grid, name: str) -> dict:
    """``defaults`` then the condition, merged section by section (a key in both: the condition's)."""
    out: dict[str, dict] = {}
    for layer in (grid.defaults, grid.conditions[name]):
        for section, values in layer.items():
            out.setdefault(str(section), {}).update(values or {})
    return out


def condition_file(grid: Grid, name: str) -> Path:
    """Write (atomically, only when changed) the condition's profile; returns its path."""
    f = grid.root / "conditions" / f"{name}.yaml"
    text = (f"# condition {name!r} of grid {grid.path.name}: written by lib.run.grid, do not edit\n"
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


def plan(grid: Grid, names: list[str] | None = None) -> dict[str, dict]:
    """Per condition: its profile, run, chain ids, and for each stage the owner condition."""
    plans, owners = {}, {}
    for name in grid.conditions:
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
            raise ParamsError(f"{grid.path}: no condition {', '.join(unknown)} (conditions: {', '.join(plans)})")
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
    """The grid and the conditions to run, once the file, ``--only`` and ``check`` on every one
    of them have passed; else one ParamsError listing every problem (nothing has run)."""
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


# ----------------------------------------------------------------------------- the table

def collect(grid: Grid, plans: dict) -> list[dict]:
    """Rows of the knowledge cell: the controls (from the first condition that scored them),
    then each condition's stage models (final models only)."""
    rows, seen_controls = [], False
    for name, p in plans.items():
        f = paths.stage_dir(p["run"], "08_agreement_analysis") / "summary.json"
        if not f.exists():
            continue
        for r in read_json(f)["rows"]:
            if r.get("cell", r.get("task")) != CELL or r.get("kind") not in ("control", "stage", "baseline"):
                continue
            if r["kind"] in ("control", "baseline"):
                if seen_controls:
                    continue
                cond = "(controls)"
            else:
                cond = name
            rows.append({"condition": cond, "model": r["model"], "kind": r["kind"],
                         **{k: r.get(k) for k in ("acc_en", "acc_ko", "kappa", "kappa_lo", "kappa_hi",
                                                   "transfer_ratio", "transfer_ratio_lo", "transfer_ratio_hi",
                                                   "acc_ko_lo", "acc_ko_hi", "n")}})
        seen_controls = seen_controls or any(r["condition"] == "(controls)" for r in rows)
    return rows


def markdown(table: list[dict]) -> str:
    head = "| condition | model | knowledge acc_en | acc_ko | kappa | transfer ratio |\n|---|---|---:|---:|---:|---:|\n"
    body = "".join(f"| {r['condition']} | {r['model']} | {fmt_ci(r['acc_en'], missing='-')} | "
                   f"{fmt_ci(r['acc_ko'], r.get('acc_ko_lo'), r.get('acc_ko_hi'), ci_digits=2, missing='-')} | "
                   f"{fmt_ci(r['kappa'], r.get('kappa_lo'), r.get('kappa_hi'), ci_digits=2, missing='-')} | "
                   f"{fmt_ci(r['transfer_ratio'], r.get('transfer_ratio_lo'), r.get('transfer_ratio_hi'), ci_digits=2, missing='-')} |\n"
                   for r in table)
    return head + body


def final_of_conditions(table: list[dict]) -> list[dict]:
    """Each condition's last stage model (the pipeline's output)."""
    last: dict[str, dict] = {}
    for r in table:
        if r["kind"] == "stage":
            last[r["condition"]] = r
    return list(last.values())


def stage_rows(table: list[dict]) -> list[dict]:
    """Each condition's trained stage models (02's initialisation, the same in every condition, left out)."""
    return [r for r in table if r["kind"] == "stage" and not r["model"].startswith("02_")]


def _bar(r: dict, m: str) -> tuple[float, float, float]:
    v = r.get(m)
    if v is None:
        return float("nan"), 0.0, 0.0
    lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
    return v, max(0.0, v - (lo if lo is not None else v)), max(0.0, (hi if hi is not None else v) - v)


def figure(table: list[dict], path: Path | None = None):
    """Transfer ratio and kappa of each condition's stage models (03 to the last, one colour a
    stage), 95% intervals; the oracle and deranged controls as reference bands."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    rows = stage_rows(table)
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    stages = sorted({r["model"] for r in rows})
    controls = [r for r in table if r["kind"] == "control" and r["model"] in ("control-oracle", "control-oracle_deranged")]
    sns.set_theme(style="whitegrid")
    colours = dict(zip(stages, sns.color_palette("viridis", len(stages))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * max(len(conds), 4) + 1.8), sharey=True)
    width = 0.7 / max(len(stages), 1)
    for ax, m in zip(axes, ("transfer_ratio", "kappa")):
        for c, colour in zip(controls, ("#2a9d8f", "#e76f51")):
            v, lo, hi = _bar(c, m)
            if v != v:
                continue
            # a control with no spread (the oracle: exactly 1) still shows as a thin band
            ax.axvspan(v - max(lo, 0.01), v + max(hi, 0.01), color=colour, alpha=0.25,
                       label=c["model"].removeprefix("control-"))
        for k, stage in enumerate(stages):
            mine = [(conds.index(r["condition"]), r) for r in rows if r["model"] == stage]
            if not mine:
                continue
            ys = [i - 0.35 + width * (k + 0.5) for i, _ in mine]
            vals, lo, hi = zip(*(_bar(r, m) for _, r in mine))
            ax.errorbar(vals, ys, xerr=[lo, hi], fmt="o", ms=4, color=colours[stage], capsize=2,
                        label=stage)
        ax.set_yticks(range(len(conds)), conds)
        ax.set(xlabel=m.replace("_", " "), title=f"{CELL}: {m.replace('_', ' ')}")
        ax.axvline(0, color="grey", lw=0.8)
    axes[1].legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save(fig, path)


def write_outputs(grid: Grid, table: list[dict]) -> dict[str, Path]:
    out = {"json": write_json(grid.root / "grid.json", {"grid": str(grid.path), "cell": CELL, "rows": table})}
    note = ("\nBrackets: 95% bootstrap intervals. Controls: oracle (Korean rows copied from English: the "
            "top of the scale) and oracle_deranged (rows of the wrong words: chance).\n")
    out["md"] = write_text(grid.root / "grid.md", markdown(table) + note)
    if stage_rows(table):
        import matplotlib.pyplot as plt
        plt.close(figure(table, grid.root / "figures" / "grid.png"))
        out["figure"] = grid.root / "figures" / "grid.png"
    return out


# ----------------------------------------------------------------------------- CLI for job scripts
