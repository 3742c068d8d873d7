"""One page per run: ``outputs/<run>/report.md`` and a self-contained ``report.html``.

    python -m lib.cli.report outputs/toy          # or a run name: python -m lib.cli.report toy

    from lib.run.report import write_report
    write_report("outputs/toy")               # -> Path of report.md (report.html next to it)

It reads what the stages left behind and never runs anything: for each stage folder ``NN_*`` of
the run, in order, its status (finished = ``DONE`` exists), a few headline metrics
(:data:`HEADLINES`; stages without a list show their top-level scalars), its ``figures/``, and
its resolved parameters, package versions and git state from ``config.json`` in collapsed
``<details>`` blocks. The 08 summary table (``08_*/summary.md``) comes first, since it is the
result. The Markdown links figures relatively (it renders on GitHub and in JupyterLab next to
the stage folders); the HTML inlines them as base64 so it can be mailed as one file. Both files
are written atomically.
"""
from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib.core import paths
from lib.core.io import write_text

# Headline metrics per stage (by number), dotted paths into metrics.json; missing keys are left
# out, and a stage with none of them (or not listed, e.g. a new stage) shows its top-level scalars.
HEADLINES: dict[str, list[str]] = {
    "00": ["base_en_accuracy", "base_ko_accuracy", "en_tokens_per_char", "ko_tokens_per_char",
           "leaks", "n_params", "final_loss", "train_seconds"],
    "01": ["merge_mode", "merged_vocab_size", "added_pieces", "ko_tokens_per_char", "en_tokens_per_char",
           "en_drift"],
    "02": ["init", "added_rows", "en_ppl", "ko_ppl", "ko_bits_per_char", "en_logit_max_abs_diff"],
    "03": ["retrieval_p1", "retrieval_p1_ko2en", "retrieval_p1_en2ko", "gap", "train_seconds"],
    "04": ["ko_ppl", "en_ppl", "ko_bits_per_char", "en_bits_per_char", "train_seconds"],
    "05": ["method", "ko_ratio", "ko_ppl", "en_ppl", "loss", "train_seconds"],
    "06": ["method", "loss", "heldout_loss", "train_seconds", "dpo.heldout.after.reward_accuracy",
           "dpo.heldout.after.margin", "dpo.train_seconds"],
    "07": ["n_models", "eval_seconds", "items_per_s", "contamination.dirty_items"],
    "08": ["models", "prediction", "rep_layer", "rep_pairs", "seconds"],
}
MAX_FALLBACK = 12                     # top-level scalars shown for a stage without headlines
FIGURE_TYPES = (".png", ".svg", ".jpg", ".jpeg")
TABLE_FILES = ("results.md", "contamination.md")        # a stage's own tables, linked (07's is one row per model)
STAGE_DIR = re.compile(r"^\d\d_")


@dataclass
class Stage:
    name: str
    dir: Path
    done: dict | None                 # DONE's content; None: unfinished
    config: dict | None
    metrics: dict | None
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path, problems: list[str]) -> dict | None:
    """A JSON file, or None when absent; an unreadable one is reported in the page, not skipped."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"`{path.name}` is not readable JSON: {e}")
        return None


def read_stages(run_dir: Path) -> list[Stage]:
    """Every ``NN_*`` folder of the run (links to shared stages included), in stage order."""
    out = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir() and STAGE_DIR.match(p.name)):
        problems: list[str] = []
        done = _read_json(d / "DONE", problems) if (d / "DONE").exists() else None
        if (d / "DONE").exists() and done is None:
            done = {}
        figs = sorted(p for p in (d / "figures").glob("*") if p.suffix.lower() in FIGURE_TYPES)
        out.append(Stage(d.name, d, done, _read_json(d / "config.json", problems),
                         _read_json(d / "metrics.json", problems) if done is not None else None,
                         figs, problems))
    return out


# --- values ----------------------------------------------------------------------------------------

def fmt(v: Any) -> str:
    """A metric value for a table cell: 4 significant digits, before -> after pairs, short lists."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, dict):
        for a, b in (("before", "after"), ("first", "last"), ("old", "new")):
            if set(v) == {a, b}:
                return f"{fmt(v[a])} → {fmt(v[b])}"
        if all(not isinstance(x, (dict, list)) for x in v.values()) and len(v) <= 4:
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        return f"{{{len(v)} keys}}"
    if isinstance(v, list):
        return f"[{len(v)} items]"
    s = str(v)
    return s if len(s) <= 80 else "…" + s[-79:]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def lookup(metrics: dict, key: str) -> tuple[bool, Any]:
    cur: Any = metrics
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def headline(stage: str, metrics: dict) -> list[tuple[str, Any]]:
    """(key, value) pairs for the stage's table: its headline keys, else its top-level scalars."""
    rows = []
    for key in HEADLINES.get(stage[:2], []):
        found, value = lookup(metrics, key)
        if found:
            rows.append((key, value))
    if rows:
        return rows
    scalar = lambda v: not isinstance(v, (dict, list)) or (  # noqa: E731
        isinstance(v, dict) and set(v) in ({"before", "after"}, {"first", "last"}))
    return [(k, v) for k, v in metrics.items() if scalar(v)][:MAX_FALLBACK]


def _details(summary: str, obj: Any) -> str:
    """A collapsed block holding ``obj`` as YAML. Raw HTML with no blank line inside, so GitHub and
    python-markdown both take it as one HTML block and leave the text alone."""
    text = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100).strip()
    text = re.sub(r"\n\s*\n", "\n", text)     # a blank line would end the HTML block
    return (f"<details><summary>{html.escape(summary)}</summary>\n"
            f"<pre>{html.escape(text, quote=False)}</pre>\n</details>\n")


def _commit(config: dict | None) -> str:
    git = (config or {}).get("git") or {}
    if not git.get("commit"):
        return "–"
    return f"`{git['commit'][:8]}`" + (" (dirty)" if git.get("dirty") else "")


# --- the page ----------------------------------------------------------------------------------------

def render_markdown(run_dir: Path, stages: list[Stage]) -> str:
    finished = [s for s in stages if s.done is not None]
    lines = [f"# Run report: `{run_dir.name}`", "",
             f"`{run_dir}`: {len(finished)} of {len(stages)} stage folders finished."]
    profiles = sorted(p.name for p in run_dir.glob("params_*.yaml"))
    if profiles:
        lines.append("Profile: " + ", ".join(f"[`{p}`]({p})" for p in profiles) + ".")
    lines += ["", "| stage | status | finished at | commit |", "|---|---|---|---|"]
    for s in stages:
        status = "finished" if s.done is not None else "**unfinished**"
        when = (s.done or {}).get("finished", "–") if s.done is not None else "–"
        lines.append(f"| [{s.name}](#{s.name.lower()}) | {status} | {when} | {_commit(s.config)} |")
    lines.append("")
    for summary in sorted(run_dir.glob("08_*/summary.md")):
        note = "" if (summary.parent / "DONE").exists() else " (its stage is unfinished)"
        lines += [f"## Summary ({summary.parent.name}){note}", "",
                  summary.read_text(encoding="utf-8").strip(), ""]
    lines += environment(stages)
    for s in stages:
        lines += stage_section(run_dir, s)
    return "\n".join(lines).rstrip() + "\n"


def environment(stages: list[Stage]) -> list[str]:
    """Package versions once, with the stages whose versions differ from the first one named."""
    with_versions = [s for s in stages if s.config and s.config.get("versions")]
    if not with_versions:
        return []
    first = with_versions[0].config["versions"]
    lines = ["## Environment", "", ", ".join(f"{k} {v}" for k, v in first.items()) + "."]
    differ = [s.name for s in with_versions if s.config["versions"] != first]
    if differ:
        lines.append(f"**Versions differ** in {', '.join(differ)} (see their details below).")
    return lines + [""]


def stage_section(run_dir: Path, s: Stage) -> list[str]:
    lines = [f"## {s.name}", ""]
    if s.done is None:
        lines.append("**Unfinished**: no `DONE` (it failed, was interrupted, or is running).")
        extra = [f"[`{p.name}`]({p.relative_to(run_dir).as_posix()})"
                 for p in (s.dir / "log.txt", s.dir / f"{s.name}.ipynb") if p.exists()]
        lines += ([f"See {' and '.join(extra)}.", ""] if extra else [""])
    lines += [f"> {p}" for p in s.problems] + ([""] if s.problems else [])
    if s.metrics is not None:
        rows = headline(s.name, s.metrics)
        if rows:
            lines += ["| metric | value |", "|---|---:|"]
            lines += [f"| {_cell(k)} | {_cell(fmt(v))} |" for k, v in rows] + [""]
        lines += [f"All metrics: [`metrics.json`]({s.name}/metrics.json)"
                  + "".join(f", [`{t}`]({s.name}/{t})" for t in TABLE_FILES if (s.dir / t).exists()), ""]
    for fig in s.figures:
        lines += [f"![{s.name} {fig.stem}]({fig.relative_to(run_dir).as_posix()})", ""]
    if s.config:
        cfg = s.config
        params = {k: v for k, v in (cfg.get("params") or {}).items() if k != "run"}
        lines.append(_details("Parameters (as a params/*.yaml section)", {s.name: params}))
        lines.append(_details("Versions, git, seed", {k: cfg.get(k) for k in
                                                      ("versions", "git", "seed", "config_hash")}))
    return lines


def render_html(markdown_text: str, run_dir: Path, title: str, inline_images: bool = True) -> str:
    """HTML of the report: python-markdown (installed with tensorboard) when present, else the
    Markdown as preformatted text; local images inlined as base64 data URIs."""
    try:
        import markdown  # optional: python-markdown comes with tensorboard, not a declared dependency
        body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "toc"])
    except ImportError:
        body = f"<pre>{html.escape(markdown_text)}</pre>"
    if inline_images:
        body = re.sub(r'src="([^"]+)"', lambda m: f'src="{_data_uri(run_dir, m.group(1))}"', body)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
             "img{max-width:100%}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
             "summary{cursor:pointer}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n{body}\n</body></html>\n")


def _data_uri(run_dir: Path, src: str) -> str:
    f = (run_dir / html.unescape(src))
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
    if "://" in src or not f.is_file() or f.suffix.lower() not in mime:
        return src
    return f"data:{mime[f.suffix.lower()]};base64,{base64.b64encode(f.read_bytes()).decode('ascii')}"


def write_report(run_dir: str | Path, inline_images: bool = True) -> Path:
    """Write ``report.md`` and ``report.html`` into the run folder; return the Markdown path."""
    run_dir = paths.run_dir(str(run_dir)) if not Path(run_dir).exists() else Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (expected outputs/<run>/)")
    text = render_markdown(run_dir, read_stages(run_dir))
    md = write_text(run_dir / "report.md", text)
    write_text(run_dir / "report.html",
               render_html(text, run_dir, f"Run report: {run_dir.name}", inline_images))
    return md
