"""Parameters: profiles in ``params/*.yaml``, checked against each notebook's ``parameters`` cell.

A profile looks like::

    extends: toy.yaml          # optional: overlay this file on another one
    pipeline:
      skip: [03]               # optional: stages this profile leaves out (the no-stage-1 control)
      share: {run: toy, stages: [00, 01, 02]}   # optional: link another run's identical stages
      torch_threads: 1         # optional: torch's CPU threads in every stage (0: torch's default)
    common:                    # passed to every notebook that declares the key
      base_model: toy
    01_vocab_merge:            # one section per notebook, named by its stem
      merge_mode: hangul

A mapping-valued parameter (07's ``tasks``) composes instead of being restated: ``tasks+`` adds
entries to the value inherited from the notebook default and any ``extends:`` parent (an entry
of the same name is replaced), ``tasks-`` removes entries by name (a name that is not there is
an error). Both apply after the plain ``tasks`` value, whichever file gives it, and accumulate
along ``extends:``::

    extends: toy.yaml
    07_benchmark_eval:
      tasks+: {paws: {en: data/paws_en.jsonl, ko: data/paws_ko.jsonl, format: arc}}
      tasks-: [ghost]

The notebook's ``parameters`` cell is the schema: its names are the only keys allowed and the
types of its defaults are the types required (an int is accepted where a float is expected).
Papermill only warns about unknown parameters; here an unknown key or a wrong type fails before
anything runs, naming the key, the file (with its line) and the notebook; every such problem of a
profile is listed at once (:func:`profile_problems`). An empty file and a key given twice are
errors; a UTF-8 byte-order mark is dropped. Values, ranges and input files are checked by
:mod:`lib.run.check`.

Inside a notebook the resolved values become a :class:`lib.core.stage.Config` (``lib.core.stage``:
a stage's lifecycle, from ``resolve`` to ``finish``).
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lib.core import paths
from lib.core.hashing import RESERVED

# sections of a profile that are not a notebook's: name -> {key: default}; a key must be one of
# these and have its default's type (an int is accepted for a float); values are checked by
# lib.run.check (e.g. the judge's timeout > 0)
SECTIONS = {
    "judge": {"base_url": "http://127.0.0.1:8000/v1", "model": "judge", "api_key_env": "", "timeout": 30.0,
              "max_retries": 3, "n_boot": 1000,
              "max_wait": 60.0, "max_unparsed": 0.1},   # python -m lib.cli.judge --params (lib.eval.judge)
}
ADD, REMOVE = "+", "-"     # ``key+`` / ``key-``: compose a mapping-valued parameter


def composed(key: str) -> tuple[str, str | None]:
    """``("tasks", "+")`` for ``tasks+``, ``("tasks", None)`` for ``tasks``."""
    if len(key) > 1 and key[-1] in (ADD, REMOVE):
        return key[:-1], key[-1]
    return key, None


class ParamsError(ValueError):
    """A params file or a parameters cell is wrong; the message says where and what to do.

    ``problems`` holds every problem found (one line each) when several were collected at once."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def of(cls, problems: list[str]) -> "ParamsError":
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        return cls(head, problems)


# --- the schema: a notebook's parameters cell -------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    comment: str


def parameters_cell(nb_path: Path) -> str:
    """The source of a notebook's cell tagged ``parameters``. Read as plain JSON (an .ipynb is one),
    not with nbformat: ``python -m lib.train`` and the GPU bench run on machines without notebook
    packages."""
    try:
        nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ParamsError(f"{nb_path}: cannot read the notebook ({e})") from e
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    src = cells[0].get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_params(stage: str, nb_path: Path | None = None) -> dict[str, Param]:
    """The declared parameters of a notebook, in order: name -> Param(default, comment)."""
    nb_path = nb_path or paths.notebook_path(stage)
    if not nb_path.exists():
        raise ParamsError(f"no notebook for stage '{stage}': {nb_path} does not exist")
    src = parameters_cell(nb_path)
    lines = src.splitlines()
    out: dict[str, Param] = {}
    for node in ast.parse(src).body:
        where = f"{nb_path.name}, parameters cell line {node.lineno}"
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise ParamsError(f"{where}: only `name = literal` assignments are allowed")
        try:
            value = ast.literal_eval(node.value)
        except ValueError as e:
            raise ParamsError(f"{where}: the value of '{node.targets[0].id}' must be a literal "
                              "(no calls, no derived values: Papermill injects overrides after "
                              "this cell)") from e
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        out[node.targets[0].id] = Param(node.targets[0].id, value, comment)
    for name in RESERVED:
        if name not in out:
            raise ParamsError(f"{nb_path.name}: the parameters cell must declare '{name}'")
    return out


def check_type(name: str, value: Any, default: Any, where: str) -> Any:
    """Return ``value`` if it has the type of ``default`` (int -> float is widened), else raise."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(f"{where}: '{name}' must be {type(default).__name__} "
                          f"(like its default {default!r}), got {type(value).__name__} {value!r}")
    return value


# --- profiles -----------------------------------------------------------------------------------

@dataclass
class Profile:
    path: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)   # "common" + stages
    origin: dict[tuple[str, str | None], Path] = field(default_factory=dict)  # (section, key) -> file
    lines: dict[tuple[str, str | None], int] = field(default_factory=dict)  # (section, key) -> line

    @property
    def name(self) -> str:
        return self.path.stem

    def common(self) -> dict[str, Any]:
        return dict(self.sections.get("common", {}))

    def skipped(self) -> list[str]:
        """Stages the profile leaves out (``pipeline: {skip: [03]}``), as two-digit prefixes."""
        return [str(v).zfill(2)[:2] for v in self.sections.get("pipeline", {}).get("skip", [])]

    def torch_threads(self) -> int:
        """``pipeline: {torch_threads: N}``: torch's threads in every stage (0: torch's default)."""
        n = self.sections.get("pipeline", {}).get("torch_threads", 0)
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0

    def where(self, section: str, key: str | None = None) -> str:
        """``file:line`` of a key (or a section) as written, for error messages."""
        f = self.origin.get((section, key), self.path)
        line = self.lines.get((section, key))
        return f"{f}:{line}" if line else str(f)


def read_yaml(path: Path, what: str = "params file",
              example: str = "'extends: toy.yaml' or 'common:'") -> tuple[dict, dict[tuple[str, ...], int]]:
    """The top-level mapping of a YAML file read strictly, and the line of every mapping key in it
    by its key path (``("conditions", "b", "05_stage3_pretrain", "steps")``).

    A UTF-8 byte-order mark is dropped; an empty file, a top level that is not a mapping and a key
    given twice in one mapping are errors (YAML itself would keep the last value silently)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ParamsError(f"{path}: the {what} is empty; give at least one section (e.g. {example})")
        _no_duplicate_keys(node, path)
        raw = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}:1: the top level must be a mapping of sections, got {type(raw).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    _key_lines(node, (), lines)
    return raw, lines


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            key = prefix + (str(knode.value),)
            out[key] = knode.start_mark.line + 1
            _key_lines(vnode, key, out)


def _yaml_mapping(path: Path) -> tuple[dict, dict[tuple[str, str | None], int]]:
    """:func:`read_yaml` with the lines of sections (``(section, None)``) and their keys."""
    raw, every = read_yaml(path)
    lines: dict[tuple[str, str | None], int] = {}
    for key, line in every.items():
        if len(key) == 1:
            lines[(key[0], None)] = line
        elif len(key) == 2:
            lines[(key[0], key[1])] = line
    return raw, lines


def _no_duplicate_keys(node: yaml.Node, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            line = k.start_mark.line + 1
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise ParamsError(f"{path}:{line}: key '{k.value}' is given twice (first on line "
                                      f"{seen[k.value]}); YAML would keep only the last one. Remove one.")
                seen[k.value] = line
            _no_duplicate_keys(v, path)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _no_duplicate_keys(v, path)


def load_profile(path: str | Path, _seen: tuple[Path, ...] = ()) -> Profile:
    """Read a params file, following ``extends:`` (relative to the file) and overlaying it."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (paths.PARAMS / path).exists():
        path = paths.PARAMS / path
    path = path.resolve()
    if path in _seen:
        raise ParamsError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, _seen))}")
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    raw, lines = _yaml_mapping(path)
    parent = raw.pop("extends", None)
    prof = load_profile(path.parent / parent, _seen + (path,)) if parent else Profile(path)
    prof.path = path
    for section, values in raw.items():
        section = str(section)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ParamsError(f"{path}:{lines.get((section, None), 1)}: section '{section}' must be a "
                              f"mapping of key: value, got {values!r}")
        merged = prof.sections.setdefault(section, {})
        for key, value in values.items():
            _, op = composed(str(key))
            if op == ADD and isinstance(merged.get(key), dict) and isinstance(value, dict):
                value = {**merged[key], **value}
            elif op == REMOVE and isinstance(merged.get(key), list) and isinstance(value, list):
                value = merged[key] + [v for v in value if v not in merged[key]]
            merged[key] = value
        prof.lines[(section, None)] = lines.get((section, None), 0)
        prof.origin[(section, None)] = path
        for key in values:
            prof.origin[(section, key)] = path
            if (section, key) in lines:
                prof.lines[(section, key)] = lines[(section, key)]
            else:
                prof.lines.pop((section, key), None)
    return prof


def stage_params(prof: Profile, stage: str, run: str | Path,
                 problems: list[str] | None = None) -> dict[str, Any]:
    """Every parameter of ``stage`` after the profile is applied: defaults < common < section.

    A wrong type raises, or, with ``problems`` given, is appended there (the default is kept)."""
    schema = notebook_params(stage)
    values = {name: p.default for name, p in schema.items()}
    common = prof.common()
    later: list[tuple[str, str, str, Any]] = []
    for key, value in list(common.items()) + list(prof.sections.get(stage, {}).items()):
        section = stage if key in prof.sections.get(stage, {}) else "common"
        where = f"{prof.where(section, key)}, section '{section}' (notebook {stage})"
        name, op = composed(key)
        if name not in schema:
            continue            # unknown keys are reported by validate_profile
        if op:
            later.append((name, op, where, value))
            continue
        try:
            values[key] = check_type(key, value, schema[key].default, where)
        except ParamsError as e:
            if problems is None:
                raise
            problems.append(str(e))
    for name, op, where, value in sorted(later, key=lambda t: t[1] == REMOVE):  # adds, then removals
        try:
            values[name] = compose(name, values[name], op, value, where)
        except ParamsError as e:
            if problems is None:
                raise
            problems.append(str(e))
    values["run"] = str(paths.run_dir(str(run)))
    return values


def compose(name: str, current: Any, op: str, value: Any, where: str) -> dict:
    """``current`` with ``value``'s entries added (``+``, a mapping) or its names removed (``-``)."""
    if not isinstance(current, dict):
        raise ParamsError(f"{where}: '{name}{op}' composes a mapping, but '{name}' is "
                          f"{type(current).__name__}; set '{name}' itself")
    if op == ADD:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: '{name}+' must be a mapping of entries to add, got {value!r}")
        return {**current, **value}
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamsError(f"{where}: '{name}-' must be a list of names to remove, got {value!r}")
    missing = [v for v in value if v not in current]
    if missing:
        raise ParamsError(f"{where}: '{name}-' removes {missing}, which '{name}' does not hold "
                          f"(it holds: {', '.join(current) or 'nothing'})")
    return {k: v for k, v in current.items() if k not in value}


def profile_problems(prof: Profile, stages: list[str], value_rules: dict | None = None) -> list[str]:
    """Every structural problem of a profile, one line each: sections without a notebook, keys no
    notebook declares, reserved keys, malformed ``pipeline:`` entries, wrong types."""
    known = set(paths.stages())
    schemas = {s: notebook_params(s) for s in sorted(known)}
    problems: list[str] = []
    for section, values in prof.sections.items():
        if section == "pipeline":
            for key, value in values.items():
                where = prof.where(section, key)
                if key == "share":
                    if not (isinstance(value, dict) and set(value) == {"run", "stages"}
                            and isinstance(value["stages"], list)):
                        problems.append(f"{where}: pipeline.share must be {{run: NAME, stages: [00, 01]}}, "
                                        f"got {value!r}")
                    continue
                if key == "torch_threads":
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        problems.append(f"{where}: pipeline.torch_threads must be an integer >= 0 (0: torch's "
                                        f"default), got {value!r}")
                    continue
                if key != "skip":
                    problems.append(f"{where}: unknown key '{key}' in section 'pipeline' (known: skip, share, "
                                    "torch_threads)")
                elif not isinstance(value, list) or not all(
                        any(str(v).zfill(2) == st[:2] or str(v) == st for st in known) for v in value):
                    problems.append(f"{where}: pipeline.skip must be a list of stages (e.g. [03]), "
                                    f"got {value!r}")
            continue
        if section in SECTIONS:          # a declared section that is not a notebook's
            problems += section_problems(section, values, lambda k, s=section: prof.where(s, k),
                                         (value_rules or {}).get(section))
            continue
        if section == "common":
            for key in values:
                where = prof.where(section, key)
                if key in RESERVED:
                    problems.append(f"{where}: '{key}' is set by the runner (--run), not in params")
                elif not any(key in sch for sch in schemas.values()):
                    problems.append(f"{where}: common key '{key}' is not a parameter of any "
                                    f"notebook in {paths.NOTEBOOKS}")
            continue
        if section not in known:
            problems.append(f"{prof.where(section)}: section '{section}' names no notebook "
                            f"(known: {', '.join(sorted(known))})")
            continue
        for key in values:
            where = prof.where(section, key)
            if key in RESERVED:
                problems.append(f"{where}: '{key}' is set by the runner (--run), not in params")
            elif composed(key)[1] and composed(key)[0] in schemas[section]:
                if not isinstance(schemas[section][composed(key)[0]].default, dict):
                    problems.append(f"{where}: '{key}' composes a mapping, but '{composed(key)[0]}' "
                                    "is not one; set it itself")
            elif key not in schemas[section]:
                problems.append(
                    f"{where}: key '{key}' in section '{section}' is not a parameter of "
                    f"notebooks/{section}.ipynb (its parameters: {', '.join(schemas[section])})")
    for stage in stages:     # types, with defaults filled in
        stage_params(prof, stage, "check", problems)
    return problems


def dataclass_values(cls: type, values: dict) -> dict:
    """``values`` checked against the fields of the dataclass ``cls`` (a spec built from a params
    section): an unknown key fails naming it and the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
    return dict(values)


def section_problems(section: str, values: dict, where, value_rule=None) -> list[str]:
    """Problems of a declared non-notebook section, in key order (``where(key)``: file:line):
    unknown keys, wrong types, and what ``value_rule(key, value)`` (the section owner's rule, given
    by ``check``) says of a well-typed value."""
    known, out = SECTIONS[section], []
    for k, v in values.items():
        if k not in known:
            out.append(f"{where(k)}: unknown key '{k}' in section '{section}' (known: {', '.join(known)})")
        elif isinstance(v, bool) or not isinstance(v, (float, int) if isinstance(known[k], float) else type(known[k])):
            out.append(f"{where(k)}: {section}.{k} must be {type(known[k]).__name__} (like {known[k]!r}), got {v!r}")
        elif value_rule is not None and (msg := value_rule(k, v)):
            out.append(f"{where(k)}: {msg}")
    return out


def validate_profile(prof: Profile, stages: list[str]) -> None:
    """Raise one ParamsError listing every problem :func:`profile_problems` finds."""
    problems = profile_problems(prof, stages)
    if problems:
        raise ParamsError.of(problems)
