"""Extra lm-eval tasks scored for every model of 07 besides the paired ones (``extra_tasks``).

The paired tasks ask whether Korean reaches English on the same questions; the extra tasks ask
what each stage does to the model's general command of a language: English retention (hellaswag,
truthfulqa_mc2, arc_easy, mmlu after each stage minus the base model) and Korean gains (kobest_*,
kmmlu). 08 turns them into per-stage deltas with intervals (:mod:`lib.analysis.extradelta`). The parameter
lists them per language; an entry is any of::

    hellaswag, kobest_copa, mmlu            a task or group name of lm-eval's own task index
    data/my_task.yaml, {repo}/x/task.yml    a local lm-eval task (or group) YAML
    toy:en_syntax, toy:ko_syntax            the toy world's tasks, built by 07 (lib.eval.toyextra)

    extras = resolve({"en": ["toy:en_syntax"], "ko": ["toy:ko_syntax"]}, {}, run_dir, stage_dir / "extra_tasks")
    res = run_extra(lm, extras, limit=0, ...)          # one lm-eval call for all of them
    entry = write_results(name, extras, res, stage_dir / "extra" / name, keys, seconds)

Every name, path and toy task goes through the same code: lm-eval's ``TaskManager`` with the
YAMLs' folders as ``include_path`` and, only when some entry is a name, its default index
(``include_defaults=True``, ~11-14 s once per process; cached). Results are stored per model
under ``<stage>/extra/<model>/`` (``extra.json`` last: ``tasks`` and the ``keys`` each task was
scored under, as :func:`lib.eval.harness.plan_model` reads them), so adding a task to a finished run
scores only that task. A task's fingerprint: a name, the name and lm-eval's version; a local YAML,
its text, the YAMLs it ``include:``s and the local data files its ``dataset_kwargs.data_files``
names (hashed); a toy task, its generated YAML and data.

**Groups** (``mmlu``, ``kobest``, ``kmmlu``): the score is the mean over every item of every leaf
subtask (pooled), which is lm-eval's own group aggregate when the group weights by size (mmlu,
kmmlu and kobest do); lm-eval's aggregate is kept beside it (``lm_eval``) and each leaf's
samples are stored, so per-subtask numbers stay available. **Metric**: ``extra_metric`` names
one per task (``acc``, ``acc_norm``, ``exact_match,strict-match``: metric[,filter]); by default
``acc_norm`` where the task has it, else ``acc``, else its first metric. The per-item values of
the metric must be numbers (a 0/1 correctness, or e.g. truthfulqa_mc2's probability mass), since
08's deltas are paired differences of them.
"""
from __future__ import annotations

import functools
import shutil
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from lib.core import hashing, paths
from lib.core.hashing import file_sha256
from lib.core.io import atomic_dir, read_json, write_json, write_text
from lib.eval import lmjson, toyextra

LANGS = ("en", "ko")
YAML_SUFFIXES = (".yaml", ".yml")
AUTO_ORDER = ("acc_norm", "acc")          # the default metric: the first of these a task has
DEFAULT_FILTER = "none"
STORE = "extra"                           # <stage>/extra/<model>/
TASKS_DIR = "extra_tasks"                 # <stage>/extra_tasks/: the generated toy tasks
ENTRY = "extra.json"


class ExtraTaskError(ValueError):
    """An ``extra_tasks`` / ``extra_metric`` entry is wrong; the message says which and what to do."""


@dataclass(frozen=True)
class Extra:
    """One extra task, resolved. ``name``: the lm-eval task or group name (results are stored
    under it); ``kind``: name | yaml | toy; ``yaml``: the local YAML (absolute) or None."""
    name: str
    lang: str
    spec: str
    kind: str
    yaml: str | None
    metric: str          # "auto" or metric[,filter]
    digest: str


# ---------------------------------------------------------------------------- the parameters


def kind_of(spec: str) -> str:
    """``toy`` (``toy:...``), ``yaml`` (ends in .yaml/.yml or holds a '/'), else ``name``."""
    if spec.startswith(toyextra.PREFIX):
        return "toy"
    if spec.endswith(YAML_SUFFIXES) or "/" in spec or "{" in spec:
        return "yaml"
    return "name"


def entries(extra_tasks: Any) -> list[tuple[str, str]]:
    """``[(lang, spec)]`` of the parameter, checked: ``{"en": [...], "ko": [...]}`` (either key
    may be left out), non-empty strings, no entry twice."""
    if not isinstance(extra_tasks, Mapping):
        raise ExtraTaskError(f"must map a language to a list of tasks, e.g. {{\"en\": [\"hellaswag\"], "
                             f"\"ko\": [\"kobest_copa\"]}} ({{}} for none), got {extra_tasks!r}")
    bad = [k for k in extra_tasks if k not in LANGS]
    if bad:
        raise ExtraTaskError(f"unknown language keys {bad}: use {' and '.join(LANGS)} (the language a "
                             "task measures: English retention or Korean)")
    out, seen = [], {}
    for lang in LANGS:
        items = extra_tasks.get(lang, [])
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise ExtraTaskError(f"extra_tasks['{lang}'] must be a list of task names or YAML paths, got {items!r}")
        for spec in items:
            if not isinstance(spec, str) or not spec.strip() or spec != spec.strip():
                raise ExtraTaskError(f"extra_tasks['{lang}']: {spec!r} is not a task name or path "
                                     "(a non-empty string without surrounding spaces)")
            if spec in seen:
                raise ExtraTaskError(f"extra_tasks: {spec!r} is listed twice ({seen[spec]} and {lang})")
            if kind_of(spec) == "toy":
                try:
                    toyextra.check_name(spec)
                except toyextra.ToyTaskError as e:
                    raise ExtraTaskError(f"extra_tasks['{lang}']: {e}") from None
            seen[spec] = lang
            out.append((lang, spec))
    return out


def check_metrics(extra_metric: Any) -> None:
    """``extra_metric``: ``{task: metric}``, task by name (or as listed), metric ``name[,filter]``."""
    if not isinstance(extra_metric, Mapping):
        raise ExtraTaskError(f"must map a task to a metric, e.g. {{\"hellaswag\": \"acc\"}}, got {extra_metric!r}")
    for task, metric in extra_metric.items():
        if not isinstance(metric, str) or not metric.strip() or metric.count(",") > 1:
            raise ExtraTaskError(f"extra_metric['{task}']: {metric!r} is not a metric such as acc, "
                                 "acc_norm or exact_match,strict-match")


def check(extra_tasks: Any) -> None:
    """The schema of ``extra_tasks`` (for lib.run.check's value rules)."""
    entries(extra_tasks)


def yaml_task_name(path: Path) -> str:
    """The ``task`` (or ``group``) a task YAML defines: what lm-eval calls it."""
    cfg = _load_yaml(path)
    for key in ("group", "task") if isinstance(cfg.get("task"), list) else ("task", "group"):
        if isinstance(cfg.get(key), str) and cfg[key]:
            return cfg[key]
    raise ExtraTaskError(f"{path}: an lm-eval task YAML needs 'task: <name>' (or 'group: <name>' "
                         f"with a task list); it has {sorted(cfg)}")


def _load_yaml(path: Path) -> dict:
    class _Loader(yaml.SafeLoader):
        pass
    # lm-eval's `!function module.fn` tags: kept as text here (only names and files are read)
    _Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ExtraTaskError(f"{path}: not a readable task YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise ExtraTaskError(f"{path}: a task YAML must be a mapping, got {type(cfg).__name__}")
    return cfg


def _data_files(cfg: Mapping) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg.get("dataset_kwargs"), Mapping) else None
    if isinstance(files, str):
        return [files]
    if isinstance(files, Mapping):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return [f for f in files or [] if isinstance(f, str)]


def yaml_digest(path: Path) -> str:
    """What a local task's results depend on: its YAML text, the YAMLs it includes (recursively,
    relative to it) and the local data files it names (their hashes)."""
    parts, todo, seen = [], [path], set()
    while todo:
        p = todo.pop()
        if p in seen or not p.is_file():
            continue
        seen.add(p)
        cfg = _load_yaml(p)
        parts.append((p.name, file_sha256(p)))
        inc = cfg.get("include")
        for i in [inc] if isinstance(inc, str) else inc or []:
            todo.append((p.parent / i).resolve())
        for f in _data_files(cfg):
            fp = Path(f)
            if fp.is_absolute() and fp.is_file():
                parts.append((str(fp), file_sha256(fp)))
    return hashing.digest(parts)


def lm_eval_version() -> str:
    return version("lm_eval")


def resolve(extra_tasks: Any, extra_metric: Any, run: str | Path, out_dir: str | Path) -> list[Extra]:
    """Check the parameters and resolve every entry: toy tasks are built into ``out_dir``, YAML
    paths read for their task name; names are checked against lm-eval's index (built only then)."""
    items = entries(extra_tasks)
    check_metrics(extra_metric)
    out: list[Extra] = []
    names = [spec for _, spec in items if kind_of(spec) == "name"]
    if names:
        unknown = unknown_names(names)
        if unknown:
            raise ExtraTaskError(f"extra_tasks: {', '.join(map(repr, unknown))} not in lm-eval's task "
                                 f"index (lm_eval {lm_eval_version()}); see `lm_eval ls tasks`, or give "
                                 "the path of a task YAML")
    for lang, spec in items:
        kind = kind_of(spec)
        if kind == "toy":
            yaml_path, _ = toyextra.write_task(toyextra.check_name(spec), paths.stage_dir(run, paths.TOY_STAGE),
                                               out_dir)
            name, digest = yaml_task_name(yaml_path), yaml_digest(yaml_path)
        elif kind == "yaml":
            yaml_path = paths.resolve_path(spec, run)
            if not yaml_path.is_file():
                raise ExtraTaskError(f"extra_tasks['{lang}']: task YAML not found: {yaml_path} (from {spec!r})")
            name, digest = yaml_task_name(yaml_path), yaml_digest(yaml_path)
        else:
            yaml_path, name, digest = None, spec, hashing.digest({"name": spec, "lm_eval": lm_eval_version()})
        metric = extra_metric.get(spec, extra_metric.get(name, "auto"))
        out.append(Extra(name, lang, spec, kind, str(yaml_path) if yaml_path else None, metric, digest))
    dup = sorted({x.name for x in out if [y.name for y in out].count(x.name) > 1})
    if dup:
        raise ExtraTaskError(f"extra_tasks: several entries are the lm-eval task {', '.join(dup)}")
    stray = [k for k in extra_metric if k not in {x.spec for x in out} | {x.name for x in out}]
    if stray:
        raise ExtraTaskError(f"extra_metric names {stray}, which are not in extra_tasks "
                             f"({', '.join(x.name for x in out) or 'none'})")
    return out


def describe(extras: Sequence[Extra]) -> list[dict[str, Any]]:
    """One row per extra task for the notebook: name, language, kind, spec, metric, YAML."""
    return [{k: v for k, v in asdict(x).items() if k != "digest"} for x in extras]


# ---------------------------------------------------------------------------- lm-eval


@functools.lru_cache(maxsize=4)
def _manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager  # lm-eval's task index: ~0.6 s to import; check reads this module
    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def task_manager(extras: Sequence[Extra]):
    """lm-eval's TaskManager for these tasks: their YAMLs' folders, plus the default index only
    when some task is given by name (cached: building it takes seconds)."""
    include = tuple(sorted({str(Path(x.yaml).parent) for x in extras if x.yaml}))
    return _manager(include, any(x.kind == "name" for x in extras))


def unknown_names(names: Sequence[str]) -> list[str]:
    """The names not in lm-eval's default task index (tasks, groups, tags)."""
    known = set(_manager((), True).all_tasks)
    return [n for n in names if n not in known]


def run_extra(lm: Any, extras: Sequence[Extra], *, batch_size: int = 16, num_fewshot: int = 0,
              limit: int = 0, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """One ``simple_evaluate`` of every extra task (``limit``: the first items of each leaf task)."""
    from lm_eval import simple_evaluate  # lm-eval's evaluator: ~0.6 s to import; only when scoring
    return simple_evaluate(model=lm, tasks=[x.name for x in extras], num_fewshot=num_fewshot,
                           limit=limit if limit > 0 else None, batch_size=batch_size, device=device,
                           log_samples=True, task_manager=task_manager(extras), random_seed=seed,
                           numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


def leaves(res: Mapping[str, Any], name: str) -> list[str]:
    """The leaf tasks of ``name`` in lm-eval's results (itself for a task)."""
    sub = (res.get("group_subtasks") or {}).get(name)
    if not sub:
        return [name]
    return [leaf for child in sub for leaf in leaves(res, child)]


def _groups(res: Mapping[str, Any], name: str) -> set[str]:
    sub = (res.get("group_subtasks") or {}).get(name)
    return {name} | {g for c in sub or [] for g in _groups(res, c)}


def metric_key(metric: str) -> str:
    """``acc`` -> ``acc,none``: lm-eval's metric,filter key."""
    return metric if "," in metric else f"{metric},{DEFAULT_FILTER}"


def available_metrics(samples: Mapping[str, Sequence[Mapping]], tasks: Sequence[str]) -> list[str]:
    """The ``metric,filter`` keys every leaf's per-sample records carry, in lm-eval's order."""
    common: list[str] | None = None
    for t in tasks:
        keys = list(dict.fromkeys(f"{m},{s['filter']}" for s in samples.get(t, []) for m in s.get("metrics", [])))
        common = keys if common is None else [k for k in common if k in keys]
    return common or []


def choose_metric(x: Extra, available: Sequence[str]) -> str:
    if x.metric != "auto":
        key = metric_key(x.metric)
        if key not in available:
            raise ExtraTaskError(f"extra_metric['{x.name}']: {x.metric!r} is not a metric of {x.name} "
                                 f"(it has {', '.join(available) or 'none'})")
        return key
    for m in AUTO_ORDER:
        if metric_key(m) in available:
            return metric_key(m)
    if not available:
        raise ExtraTaskError(f"{x.name}: lm-eval logged no per-sample metric")
    return available[0]


def item_values(samples: Sequence[Mapping], key: str, where: str) -> list[tuple[int, float]]:
    """``[(doc_id, value)]`` of one leaf's records under ``key`` (metric,filter); numbers only."""
    metric, flt = key.split(",", 1)
    out = []
    for s in samples:
        if s.get("filter") != flt:
            continue
        v = s.get(metric)
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)):
            raise ExtraTaskError(f"{where}: per-sample {metric} is {v!r}, not a number: 08's deltas "
                                 "need a per-item score; name another metric in extra_metric")
        out.append((int(s["doc_id"]), float(v)))
    return out


# ---------------------------------------------------------------------------- stored results


def _files(task: Mapping[str, Any]) -> list[str]:
    return [Path(f).name for f in task["samples"].values()] + [task["results"]]


def stored(stage_dir: str | Path, model: str) -> dict[str, Any] | None:
    f = Path(stage_dir) / STORE / model / ENTRY
    return read_json(f) if f.is_file() else None


def summarize(x: Extra, res: Mapping[str, Any], final: Path) -> dict[str, Any]:
    """The manifest entry of one scored extra task (paths as they will be under ``final``)."""
    tasks = leaves(res, x.name)
    key = choose_metric(x, available_metrics(res["samples"], tasks))
    values = [v for t in tasks for _, v in item_values(res["samples"][t], key, f"{x.name} / {t}")]
    if not values:
        raise ExtraTaskError(f"{x.name}: no items were scored")
    lm_val = (res.get("results") or {}).get(x.name, {}).get(key)
    return {"lang": x.lang, "kind": x.kind, "spec": x.spec, "metric": key, "value": sum(values) / len(values),
            "lm_eval": lm_val, "n": len(values), "subtasks": tasks,
            "samples": {t: str(final / f"samples_{t}.jsonl") for t in tasks},
            "results": f"results_{x.name}.json"}


def write_results(model: str, extras: Sequence[Extra], res: Mapping[str, Any] | None, final: str | Path,
                  keys: Mapping[str, Any], seconds: float, keep: Mapping[str, Mapping] | None = None,
                  order: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``extra/<model>/``: per task ``results_<task>.json`` and ``samples_<leaf>.jsonl``; the
    tasks in ``keep`` carried over from the folder; ``extra.json`` last. Returns ``{task: entry}``."""
    final, keep = Path(final), keep or {}
    new = {x.name: x for x in extras}
    out: dict[str, Any] = {}
    with atomic_dir(final, overwrite=True) as tmp:
        for name in order or list(keep) + list(new):
            if name in keep:
                for f in _files(keep[name]):
                    shutil.copy(final / f, tmp / f)
                out[name] = {**keep[name], "samples": {t: str(final / Path(p).name)
                                                       for t, p in keep[name]["samples"].items()}}
                continue
            if name not in new:
                continue
            x = new[name]
            entry = summarize(x, res, final)
            names = _groups(res, name) | set(entry["subtasks"])
            write_text(tmp / entry["results"], lmjson.dumps(lmjson.restricted(res, names), indent=2) + "\n")
            for t in entry["subtasks"]:
                write_text(tmp / f"samples_{t}.jsonl", "".join(lmjson.dumps(s) + "\n" for s in res["samples"][t]))
            out[name] = {**entry, "seconds": seconds}
        write_json(tmp / ENTRY, {"name": model, "tasks": out, "keys": dict(keys)})
    return out


def reuse(model: str, source: str, tasks: Mapping[str, Mapping], stage_dir: str | Path,
          keys: Mapping[str, Any]) -> dict[str, Any]:
    """``model``'s extra results as a copy of an identical model's (same weights): ``tasks`` is
    the source's manifest ``extra`` (the tasks to copy)."""
    src, final = Path(stage_dir) / STORE / source, Path(stage_dir) / STORE / model
    out = {}
    with atomic_dir(final, overwrite=True) as tmp:
        for name, t in tasks.items():
            for f in _files(t):
                shutil.copy(src / f, tmp / f)
            out[name] = {**t, "samples": {k: str(final / Path(p).name) for k, p in t["samples"].items()},
                         "seconds": 0.0}
        write_json(tmp / ENTRY, {"name": model, "tasks": out, "keys": dict(keys)})
    return out


def score(lm: Any, model: str, extras: Sequence[Extra], stage_dir: str | Path, keys: Mapping[str, Any],
          keep: Mapping[str, Mapping] | None = None, order: Sequence[str] | None = None, **kw) -> dict[str, Any]:
    """Score ``extras`` with an lm-eval model object and store them (``keep``: stored tasks carried over)."""
    start = time.perf_counter()
    res = run_extra(lm, extras, **kw) if extras else None
    return write_results(model, extras, res, Path(stage_dir) / STORE / model, keys,
                         time.perf_counter() - start, keep, order)


def table_rows(manifest: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and extra task: model, stage, step, task, lang, metric, value, lm_eval, n."""
    return [{"model": e["name"], "stage": e["stage"], "step": e["step"], "task": t, "lang": v["lang"],
             "metric": v["metric"], "value": v["value"], "lm_eval": v["lm_eval"], "n": v["n"]}
            for e in manifest for t, v in (e.get("extra") or {}).items()]


# ---------------------------------------------------------------------------- planning (lib.run.plan)

# Approximate evaluation size of common lm-eval tasks: (items, options per item, leaf subtasks),
# for lib.run.plan's time estimate only (unknown tasks count as UNKNOWN_SIZE).
KNOWN_SIZES: dict[str, tuple[int, int, int]] = {
    "hellaswag": (10042, 4, 1), "truthfulqa_mc2": (817, 7, 1), "arc_easy": (2376, 4, 1),
    "arc_challenge": (1172, 4, 1), "mmlu": (14042, 4, 57), "winogrande": (1267, 2, 1), "piqa": (1838, 2, 1),
    "kobest_boolq": (1404, 2, 1), "kobest_copa": (1000, 2, 1), "kobest_hellaswag": (500, 4, 1),
    "kobest_sentineg": (397, 2, 1), "kobest_wic": (1260, 2, 1), "kmmlu": (35030, 4, 45)}
UNKNOWN_SIZE = (1000, 4, 1)


def planned_requests(extra_tasks: Any, limit: int, path_of) -> tuple[int, list[str]]:
    """``(requests, notes)``: the option log-likelihoods one model's extra tasks ask for, roughly
    (``path_of`` resolves a path parameter; local files are counted, known names looked up)."""
    total, guessed = 0, []
    for _, spec in entries(extra_tasks):
        kind = kind_of(spec)
        if kind == "toy":
            f = path_of("{toy}/" + toyextra.TASKS[toyextra.check_name(spec)][0])
            items, options, leaves_n = (sum(1 for _ in f.open(encoding="utf-8")) if f.is_file() else 200), 2, 1
        elif kind == "yaml":
            f = path_of(spec)
            files = [Path(d) for d in _data_files(_load_yaml(f))] if f.is_file() else []
            items = sum(sum(1 for _ in d.open(encoding="utf-8")) for d in files if d.is_file()) or UNKNOWN_SIZE[0]
            options, leaves_n = UNKNOWN_SIZE[1:]
        else:
            if spec not in KNOWN_SIZES:
                guessed.append(spec)
            items, options, leaves_n = KNOWN_SIZES.get(spec, UNKNOWN_SIZE)
        if limit:
            items = min(items, limit * leaves_n)
        total += items * options
    notes = [f"extra tasks: {total:,} requests per model"] if total else []
    if guessed:
        notes.append(f"sizes of {', '.join(guessed)} unknown: counted as {UNKNOWN_SIZE[0]:,} items")
    return total, notes
