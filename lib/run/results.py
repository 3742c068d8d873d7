"""Result tables for the README and docs/, written from a finished run's files, never by hand.

Each table is rendered from what a run left on disk and headed by a stamp that says how to write it
again and which code produced the numbers (the commit its stage's ``config.json`` records)::

    <!-- written by python -m lib.cli.results outputs/toy --table transfer on 2026-12-07;
         run at commit ee17a42 (dirty: no), 2 torch threads -->

Tables (:data:`TABLES`): ``transfer`` (08's calibrated table: every final model between the
controls, per question cell), ``excerpt`` (its headline rows), ``extra`` (08's extra-task deltas
from the base model), ``scores`` (07's accuracies per task and language) and ``dpo`` (06's held-out
preference pairs before and after DPO). In a markdown file a table lives between two markers, which
:func:`replace_block` rewrites in place::

    <!-- results:transfer -->
    ...                              (everything here is replaced)
    <!-- /results:transfer -->

    md = render(run_dir, "transfer")                       # stamp + table
    text = replace_block(Path("README.md").read_text(), "transfer", md)
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lib.analysis.transfer import transfer_table
from lib.core import paths
from lib.core.io import read_json, write_text
from lib.core.markdown import to_markdown
from lib.core.stats import fmt_ci
from lib.eval.rules import REPORTED

ANALYSIS = "08_agreement_analysis"
EVAL = "07_benchmark_eval"
SFT = "06_instruction_tuning"
COMMAND = "python -m lib.cli.results"
# the README's excerpt: the controls that bracket the scale, the base, and the training stages' final models
EXCERPT_MODELS = ("control-oracle", "control-oracle_deranged", "03_stage1_contrastive",
                  "05_stage3_pretrain", "06_instruction_tuning")


class ResultsError(ValueError):
    """A run folder lacks what a table needs, or a markdown file lacks its markers."""


# ---------------------------------------------------------------------------- reading a run


def run_path(run: str | Path) -> Path:
    """A run folder given as a path (``outputs/toy``, ``/tmp/toy_after``) or a run name (``toy``)."""
    p = Path(run)
    return p if p.is_dir() else paths.run_dir(str(run))


def stage_json(run_dir: Path, stage: str, name: str) -> Any:
    """``<run>/<stage>/<name>`` of a finished stage; errors say which file is missing and why."""
    sd = run_dir / stage
    if not (sd / "DONE").exists():
        raise ResultsError(f"{sd} is not finished (no DONE): run the pipeline to the end first "
                           f"(python -m lib.pipeline run PARAMS.yaml --run {run_dir})")
    f = sd / name
    if not f.is_file():
        raise ResultsError(f"{f} does not exist; rerun {stage} (python -m lib.pipeline run PARAMS.yaml "
                           f"--run {run_dir} --only {stage[:2]} --force)")
    return read_json(f)


def summary_rows(run_dir: Path) -> list[dict]:
    return stage_json(run_dir, ANALYSIS, "summary.json")["rows"]


def provenance(run_dir: Path, stage: str) -> str:
    """``run at commit abc1234 (dirty: no), 2 torch threads`` from the stage's ``config.json``."""
    f = run_dir / stage / "config.json"
    cfg = read_json(f) if f.is_file() else {}
    git = cfg.get("git") or {}
    commit = (git.get("commit") or "unknown")[:7]
    dirty = {True: "yes", False: "no"}.get(git.get("dirty"), "unknown")
    threads = cfg.get("torch_threads")
    return f"run at commit {commit} (dirty: {dirty})" + (f", {threads} torch threads" if threads else "")


def stamp(run_arg: str, table: str, provenance_text: str, day: dt.date) -> str:
    """The comment line above a written table: the command that writes it again, and its origin."""
    return f"<!-- written by {COMMAND} {run_arg} --table {table} on {day.isoformat()}; {provenance_text} -->"


# ---------------------------------------------------------------------------- the tables


def label(row: Mapping, several_runs: bool) -> str:
    return f"{row['run']}/{row['model']}" if several_runs else str(row["model"])


def transfer_rows(rows: Sequence[Mapping], cols: Sequence[tuple[str, str, str, bool]],
                  keep: Callable[[Mapping], bool] = lambda t: True) -> list[dict]:
    """08's summary rows as one dict per final model: ``cols`` = (header, cell, metric, with CI)."""
    table = [t for t in transfer_table(rows) if keep(t)]
    several = len({t["run"] for t in table}) > 1
    out = []
    for t in table:
        d = {"model": label(t, several)}
        for head, cell, m, ci in cols:
            k = f"{cell}:{m}"
            d[head] = fmt_ci(t.get(k), t.get(f"{k}_lo"), t.get(f"{k}_hi")) if ci else fmt_ci(t.get(k))
        out.append(d)
    return out


TRANSFER_COLUMNS = (("knowledge acc_en", "knowledge", "acc_en", False),
                    ("knowledge acc_ko", "knowledge", "acc_ko", True),
                    ("kappa", "knowledge", "kappa", True),
                    ("transfer ratio", "knowledge", "transfer_ratio", True),
                    ("bridge_heldout acc_en", "bridge_heldout", "acc_en", False),
                    ("bridge_heldout acc_ko", "bridge_heldout", "acc_ko", True),
                    ("ghost acc_en", "ghost", "acc_en", False),
                    ("ghost acc_ko", "ghost", "acc_ko", True))
EXCERPT_COLUMNS = (("knowledge acc_en", "knowledge", "acc_en", False),
                   ("knowledge acc_ko", "knowledge", "acc_ko", True),
                   ("transfer ratio", "knowledge", "transfer_ratio", True),
                   ("bridge_heldout acc_ko", "bridge_heldout", "acc_ko", True))


def aligned(rows: list[dict]) -> str:
    """A pipe table whose columns after the first are right-aligned (every cell is a string here)."""
    md = to_markdown(rows).splitlines()
    md[1] = "|---|" + "---:|" * (md[1].count("|") - 2)
    return "\n".join(md) + "\n"


def transfer(run_dir: Path) -> str:
    """Every baseline, control and stage's final model: the knowledge cell (acc_en, acc_ko, kappa,
    transfer ratio) and acc_en / acc_ko of bridge_heldout and ghost; brackets: 95% intervals."""
    return aligned(transfer_rows(summary_rows(run_dir), TRANSFER_COLUMNS))


def excerpt(run_dir: Path) -> str:
    """The README's rows of :func:`transfer`: oracle, deranged, the base model, 03, 05 and 06."""
    keep = lambda t: t["model"] in EXCERPT_MODELS or t.get("kind") == "baseline"  # noqa: E731
    return aligned(transfer_rows(summary_rows(run_dir), EXCERPT_COLUMNS, keep))


def extra(run_dir: Path) -> str:
    """08's extra-task deltas of each final model: ``base → value: delta [lo, hi]`` per task."""
    deltas = [r for r in stage_json(run_dir, ANALYSIS, "summary.json").get("extra_deltas") or []
              if r.get("kind") != "checkpoint"]
    if not deltas:
        raise ResultsError(f"{run_dir / ANALYSIS / 'summary.json'} has no extra_deltas: 07 ran no extra_tasks")
    several = len({r["run"] for r in deltas}) > 1
    heads = {r["task"]: f"{r['task']} ({r['lang']}, n={r['n']})" for r in deltas}
    table: dict[str, dict] = {}
    for r in deltas:
        d = table.setdefault(label(r, several), {"model": label(r, several)})
        d[heads[r["task"]]] = (f"{fmt_ci(r['base'])} → {fmt_ci(r['value'])}: "
                               f"{fmt_ci(r['delta'], r.get('delta_lo'), r.get('delta_hi'), signed=True)}")
    return aligned(list(table.values()))


def scores(run_dir: Path) -> str:
    """07's accuracy of every final model per paired task and language, under the task's rule."""
    evals = stage_json(run_dir, EVAL, "evals.json")
    rows = []
    for e in evals:
        if e.get("kind") == "checkpoint":
            continue
        d: dict[str, Any] = {"model": e["name"]}
        for task, langs in e["tasks"].items():
            for lang, s in langs.items():
                d[f"{task} {lang}"] = s.get(REPORTED.get(s.get("rule", "acc"), s.get("rule", "acc")))
        rows.append(d)
    return to_markdown(rows)


DPO_KINDS = ("fact", "language")


def dpo(run_dir: Path) -> str:
    """06's held-out preference pairs, all and per kind: n, reward accuracy and margin after DPO,
    and how often log p(chosen) > log p(rejected) before (the SFT model) and after DPO."""
    m = stage_json(run_dir, SFT, "metrics.json").get("dpo")
    if not m:
        raise ResultsError(f"{run_dir / SFT / 'metrics.json'} has no dpo section: 06 ran with dpo: false")
    before, after = m["heldout"]["before"], m["heldout"]["after"]
    rows = []
    for name, b, a in [("all", before, after)] + [(k, before["by_kind"][k], after["by_kind"][k])
                                                   for k in DPO_KINDS if k in after.get("by_kind", {})]:
        rows.append({"held-out pairs": name, "n": a["n"], "reward accuracy": a["reward_accuracy"],
                     "margin": a["margin"],
                     "log p(chosen) > log p(rejected), SFT -> DPO":
                         f"{b['logp_accuracy']:.2f} -> {a['logp_accuracy']:.2f}"})
    return to_markdown(rows, digits=2)


# name -> (renderer, the stage whose config.json stamps it)
TABLES: dict[str, tuple[Callable[[Path], str], str]] = {
    "transfer": (transfer, ANALYSIS), "excerpt": (excerpt, ANALYSIS), "extra": (extra, ANALYSIS),
    "scores": (scores, EVAL), "dpo": (dpo, SFT)}


def render(run: str | Path, table: str, day: dt.date | None = None) -> str:
    """The stamp line, a blank line and the table (``run`` as the user wrote it goes into the stamp)."""
    if table not in TABLES:
        raise ResultsError(f"no table {table!r}; choose one of {', '.join(TABLES)}")
    fn, stage = TABLES[table]
    rd = run_path(run)
    body = fn(rd)
    return f"{stamp(str(run), table, provenance(rd, stage), day or dt.date.today())}\n\n{body}"


# ---------------------------------------------------------------------------- markers in markdown


def markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


MARKER_RE = re.compile(r"<!-- results:([\w.-]+) -->")


def marker_names(text: str) -> list[str]:
    """The NAMEs of every ``<!-- results:NAME -->`` block in a markdown text, in order."""
    return MARKER_RE.findall(text)


def replace_block(text: str, name: str, content: str, where: str = "the text") -> str:
    """``text`` with everything between the ``results:NAME`` markers replaced by ``content``."""
    start, end = markers(name)
    i, j = text.find(start), text.find(end)
    if text.count(start) != 1 or text.count(end) != 1 or j < i:
        raise ResultsError(f"{where}: needs exactly one '{start}' followed by one '{end}' "
                           f"(found {text.count(start)} and {text.count(end)})")
    # blank line before the end marker: a table must end before the comment that closes the block
    return text[:i + len(start)] + "\n" + content.rstrip("\n") + "\n\n" + text[j:]


def write_into(path: str | Path, run: str | Path, tables: Sequence[tuple[str, str]],
               day: dt.date | None = None) -> Path:
    """Fill the ``(marker, table)`` blocks of a markdown file from ``run``; written atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    for marker, table in tables:
        text = replace_block(text, marker, render(run, table, day), str(path))
    return write_text(path, text)
