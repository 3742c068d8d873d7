"""Result tables written from a run's files (lib.run.results, python -m lib.cli.results), and the
README / docs contract: the README stays short and every relative link in it and in docs/ resolves."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from lib.cli import results as cli
from lib.core import paths
from lib.run import results as R

DAY = dt.date(2026, 12, 7)


def cell_row(model: str, kind: str, cell: str, acc_en: float, acc_ko: float, kappa: float, tr: float,
             ci: bool = True) -> dict:
    """One row of 08's summary.json (lib.analysis.paired.summary_rows), with the fields the tables read."""
    row = {"run": "toy", "model": model, "kind": kind, "stage": None if kind == "baseline" else model,
           "step": None, "task": cell, "cell": cell, "n": 4, "chance": 0.25, "prediction": "acc"}
    for m, v in (("acc_en", acc_en), ("acc_ko", acc_ko), ("kappa", kappa), ("transfer_ratio", tr)):
        row[m] = v
        row[f"{m}_lo"], row[f"{m}_hi"] = (v - 0.1, v + 0.1) if ci else (None, None)
    return row


@pytest.fixture
def run(tmp_path: Path) -> Path:
    rd = tmp_path / "toy"
    rows = []
    for model, kind, ko, tr in (("control-oracle", "control", 0.9, 1.0),
                                ("control-oracle_deranged", "control", 0.25, 0.0),
                                ("baseline-toy", "baseline", 0.2, -0.05),
                                ("05_stage3_pretrain", "stage", 0.5, 0.4),
                                ("05_stage3_pretrain-step-000004", "checkpoint", 0.3, 0.1)):
        rows.append(cell_row(model, kind, "knowledge", 0.9, ko, tr, tr))
        rows.append(cell_row(model, kind, "ghost", 0.25, 0.25, 0.0, float("nan"), ci=False))
    extra = [{"run": "toy", "model": "05_stage3_pretrain", "kind": "stage", "task": "toy_ko_syntax", "lang": "ko",
              "metric": "acc,none", "base_model": "baseline-toy", "n": 200, "base": 0.445, "value": 1.0,
              "delta": 0.555, "delta_lo": 0.49, "delta_hi": 0.625},
             {"run": "toy", "model": "05_stage3_pretrain-step-000004", "kind": "checkpoint", "task": "toy_ko_syntax",
              "lang": "ko", "metric": "acc,none", "base_model": "baseline-toy", "n": 200, "base": 0.445,
              "value": 0.5, "delta": 0.055, "delta_lo": 0.0, "delta_hi": 0.1}]
    stage08 = rd / "08_agreement_analysis"
    stage08.mkdir(parents=True)
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
    (stage08 / "summary.json").write_text(json.dumps({"prediction": "auto", "extra_deltas": extra,
                                                      "columns": [], "rows": rows}))
    (stage08 / "config.json").write_text(json.dumps({"git": {"commit": "abc1234def", "dirty": False},
                                                     "torch_threads": 2}))
    stage07 = rd / "07_benchmark_eval"
    stage07.mkdir()
    score = lambda acc, rule="acc": {"acc": acc, "acc_norm": 0.0, "acc_mutual_info": 0.5, "rule": rule, "n": 4}  # noqa: E731
    (stage07 / "evals.json").write_text(json.dumps([
        {"name": "baseline-toy", "kind": "baseline", "tasks": {"knowledge": {"en": score(0.75), "ko": score(0.25)},
                                                              "arc": {"en": score(0.3, "calibrated")}}},
        {"name": "05_stage3_pretrain-step-000004", "kind": "checkpoint", "tasks": {}}]))
    stage06 = rd / "06_instruction_tuning"
    stage06.mkdir()
    kinds = lambda acc, m, lp: {"n": 2, "reward_accuracy": acc, "margin": m, "logp_accuracy": lp}  # noqa: E731
    (stage06 / "metrics.json").write_text(json.dumps({"dpo": {"heldout": {
        "before": {**kinds(0.0, 0.0, 1.0), "n": 4, "by_kind": {"fact": kinds(0.0, 0.0, 1.0), "language": kinds(0.0, 0.0, 1.0)}},
        "after": {**kinds(0.75, 1.4, 1.0), "n": 4, "by_kind": {"fact": kinds(0.5, 0.01, 1.0),
                                                                "language": kinds(1.0, 3.93, 1.0)}}}}}))
    for s in (stage06, stage07, stage08):
        (s / "DONE").write_text("{}")
    return rd


STAMP = "<!-- written by python -m lib.cli.results outputs/toy --table {} on 2026-12-07; run at commit abc1234 (dirty: no), 2 torch threads -->\n\n"


def test_transfer_table_controls_first_checkpoints_left_out(run):
    assert R.render(run, "transfer", DAY).replace(str(run), "outputs/toy") == STAMP.format("transfer") + """\
| model | knowledge acc_en | knowledge acc_ko | kappa | transfer ratio | bridge_heldout acc_en | bridge_heldout acc_ko | ghost acc_en | ghost acc_ko |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| control-oracle | 0.900 | 0.900 [0.800, 1.000] | 1.000 [0.900, 1.100] | 1.000 [0.900, 1.100] | n/a | n/a | 0.250 | 0.250 |
| control-oracle_deranged | 0.900 | 0.250 [0.150, 0.350] | 0.000 [-0.100, 0.100] | 0.000 [-0.100, 0.100] | n/a | n/a | 0.250 | 0.250 |
| baseline-toy | 0.900 | 0.200 [0.100, 0.300] | -0.050 [-0.150, 0.050] | -0.050 [-0.150, 0.050] | n/a | n/a | 0.250 | 0.250 |
| 05_stage3_pretrain | 0.900 | 0.500 [0.400, 0.600] | 0.400 [0.300, 0.500] | 0.400 [0.300, 0.500] | n/a | n/a | 0.250 | 0.250 |
"""


def test_excerpt_extra_scores_dpo(run):
    body = lambda t: R.render(run, t, DAY).split("\n\n", 1)[1]  # noqa: E731
    assert body("excerpt") == """\
| model | knowledge acc_en | knowledge acc_ko | transfer ratio | bridge_heldout acc_ko |
|---|---:|---:|---:|---:|
| control-oracle | 0.900 | 0.900 [0.800, 1.000] | 1.000 [0.900, 1.100] | n/a |
| control-oracle_deranged | 0.900 | 0.250 [0.150, 0.350] | 0.000 [-0.100, 0.100] | n/a |
| baseline-toy | 0.900 | 0.200 [0.100, 0.300] | -0.050 [-0.150, 0.050] | n/a |
| 05_stage3_pretrain | 0.900 | 0.500 [0.400, 0.600] | 0.400 [0.300, 0.500] | n/a |
"""
    assert body("extra") == """\
| model | toy_ko_syntax (ko, n=200) |
|---|---:|
| 05_stage3_pretrain | 0.445 → 1.000: +0.555 [0.490, 0.625] |
"""
    assert body("scores") == """\
| model | knowledge en | knowledge ko | arc en |
|---|---:|---:|---:|
| baseline-toy | 0.750 | 0.250 | 0.500 |
"""
    assert body("dpo") == """\
| held-out pairs | n | reward accuracy | margin | log p(chosen) > log p(rejected), SFT -> DPO |
|---|---:|---:|---:|---|
| all | 4 | 0.75 | 1.40 | 1.00 -> 1.00 |
| fact | 2 | 0.50 | 0.01 | 1.00 -> 1.00 |
| language | 2 | 1.00 | 3.93 | 1.00 -> 1.00 |
"""


def test_unfinished_stage_and_unknown_table_are_named(run):
    (run / "08_agreement_analysis" / "DONE").unlink()
    with pytest.raises(R.ResultsError, match="08_agreement_analysis is not finished"):
        R.render(run, "transfer", DAY)
    with pytest.raises(R.ResultsError, match="no table 'nope'"):
        R.render(run, "nope", DAY)


def test_replace_block_rewrites_only_between_markers():
    text = "# T\n<!-- results:transfer -->\nold\nlines\n<!-- /results:transfer -->\nafter\n"
    assert R.replace_block(text, "transfer", "new\n") == \
        "# T\n<!-- results:transfer -->\nnew\n\n<!-- /results:transfer -->\nafter\n"
    once = R.replace_block(text, "transfer", "new")
    assert R.replace_block(once, "transfer", "new") == once            # idempotent
    with pytest.raises(R.ResultsError, match="exactly one '<!-- results:extra -->'"):
        R.replace_block(text, "extra", "x", "README.md")
    with pytest.raises(R.ResultsError, match="found 2 and 1"):
        R.replace_block(text + "<!-- results:transfer -->\n", "transfer", "x")


def test_cli_prints_and_fills_every_block(run, tmp_path, capsys):
    assert cli.main([str(run), "--table", "extra"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"<!-- written by python -m lib.cli.results {run} --table extra on ")
    assert "| 05_stage3_pretrain | 0.445 → 1.000: +0.555 [0.490, 0.625] |" in out
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- results:excerpt -->\n<!-- /results:excerpt -->\nb\n"
                   "<!-- results:dpo -->\nstale\n<!-- /results:dpo -->\n<!-- results:notatable -->\n")
    assert cli.main([str(run), "--into", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and "| language | 2 | 1.00 | 3.93 | 1.00 -> 1.00 |" in text
    assert "--table excerpt on" in text and "| baseline-toy | 0.900 |" in text
    assert cli.main([str(run), "--table", "dpo", "--into", str(doc), "--marker", "missing"]) == 1
    assert "exactly one '<!-- results:missing -->'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- README and docs/

README = paths.PROJ_ROOT / "README.md"
DOCS = sorted((paths.PROJ_ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(md: Path) -> list[str]:
    """Targets of markdown links outside fenced code blocks, without web addresses and anchors."""
    text = re.sub(r"^```.*?^```", "", md.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [t.split("#")[0] for t in LINK.findall(text)
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_at_most_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(md):
    missing = [t for t in relative_links(md) if not (md.parent / t).exists()]
    assert missing == []


def test_layout_doc_names_every_package():
    layout = (paths.PROJ_ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    packages = sorted(d.name for d in (paths.PROJ_ROOT / "lib").iterdir()
                      if (d / "__init__.py").exists() and d.name != "pipeline")
    assert [p for p in packages if f"| `{p}` |" not in layout] == []
