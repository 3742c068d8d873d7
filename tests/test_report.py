"""The run report: built from a fake run folder (no notebook runs), checked as Markdown and HTML."""
from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from lib.cli.report import main
from lib.run.report import fmt, headline, write_report

VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0"}
SUMMARY = ("| run | model | task | agreement | kappa |\n|---|---|---|---:|---:|\n"
           "| toy | 05_stage3_pretrain | toy_arc | 0.812 [0.700, 0.900] | 0.611 |\n")


def png_1x1() -> bytes:
    """A valid 1x1 grey PNG, written by hand so the test needs no image library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def stage(run, name, params, metrics=None, figure=None, done=True, versions=VERSIONS):
    d = run / name
    (d / "figures").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "stage": name, "params": {"run": str(run), **params}, "config_hash": "abc123", "seed": 0,
        "versions": versions, "git": {"commit": "0123456789abcdef", "dirty": False}}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if figure:
        (d / "figures" / figure).write_bytes(png_1x1())
    (d / "log.txt").write_text("log\n")
    if done:
        (d / "DONE").write_text(json.dumps({"config_hash": "abc123", "finished": "2026-01-02T03:04:05+0000"}))
    return d


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "toy"
    stage(run, "01_vocab_merge", {"merge_mode": "hangul", "seed": 0},
          {"merged_vocab_size": 1050, "merge_mode": "hangul", "en_drift": 0.0,
           "ko_tokens_per_char": {"before": 2.5673575, "after": 0.9715026},
           "examples": [{"text": "햄버거"}], "secret_detail": 42}, figure="ko_lengths.png")
    stage(run, "03_stage1_contrastive", {"steps": 200}, done=False)           # interrupted
    stage(run, "06_new_stage", {"lr": 1e-4},                                  # no headline list
          {"sft_loss": {"first": 2.0, "last": 0.5}, "examples_seen": 3000, "curves": {"loss": [1, 2]}},
          versions={**VERSIONS, "torch": "2.12.0"})
    d = stage(run, "08_agreement_analysis", {"prediction": "acc_norm"},
              {"models": 4, "prediction": "acc_norm", "rows": [{"agreement": 0.8}]}, figure="agreement.png")
    (d / "summary.md").write_text(SUMMARY)
    (run / "params_toy.yaml").write_text("common:\n  seed: 0\n")
    return run


def test_markdown_report(run):
    md_path = write_report(run)
    assert md_path == run / "report.md"
    md = md_path.read_text(encoding="utf-8")
    # overview: every stage folder in order, the interrupted one marked
    order = [md.index(f"[{s}](#{s})") for s in
             ("01_vocab_merge", "03_stage1_contrastive", "06_new_stage", "08_agreement_analysis")]
    assert order == sorted(order)
    assert "| [03_stage1_contrastive](#03_stage1_contrastive) | **unfinished** |" in md
    assert "| [01_vocab_merge](#01_vocab_merge) | finished | 2026-01-02T03:04:05+0000 | `01234567` |" in md
    assert "3 of 4 stage folders finished" in md and "[`params_toy.yaml`](params_toy.yaml)" in md
    # the 08 summary table first, verbatim
    assert SUMMARY.strip() in md and md.index(SUMMARY.strip()) < md.index("## 01_vocab_merge")
    # headline metrics: listed keys only, formatted; lists and unlisted keys left out
    assert "| merged_vocab_size | 1,050 |" in md and "| ko_tokens_per_char | 2.567 → 0.9715 |" in md
    assert "| en_drift | 0 |" in md and "secret_detail" not in md and "햄버거" not in md
    # a stage without a headline list shows its top-level scalars and first -> last pairs
    assert "| examples_seen | 3,000 |" in md and "| sft_loss | 2 → 0.5 |" in md and "curves" not in md
    # figures linked relatively, metrics.json linked
    assert "![01_vocab_merge ko_lengths](01_vocab_merge/figures/ko_lengths.png)" in md
    assert "(08_agreement_analysis/figures/agreement.png)" in md
    assert "[`metrics.json`](01_vocab_merge/metrics.json)" in md
    # unfinished stage: said so, log linked, no metrics table
    sec = md[md.index("## 03_stage1_contrastive"):md.index("## 06_new_stage")]
    assert "**Unfinished**" in sec and "(03_stage1_contrastive/log.txt)" in sec and "| metric |" not in sec
    # parameters and versions, collapsed; a differing version is flagged
    assert "<details><summary>Parameters (as a params/*.yaml section)</summary>" in md
    assert "01_vocab_merge:\n  merge_mode: hangul\n  seed: 0" in md
    assert "python 3.11.7, torch 2.13.0+cpu, transformers 5.23.0." in md
    assert "**Versions differ** in 06_new_stage" in md and "torch: 2.12.0" in md
    assert "commit: 0123456789abcdef" in md


def test_html_report(run):
    write_report(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert "<td>0.812 [0.700, 0.900]</td>" in page.replace('<td style="text-align: right;">', "<td>")
    assert f'src="data:image/png;base64,{base64.b64encode(png_1x1()).decode()}"' in page
    assert "<details><summary>Parameters" in page and 'id="01_vocab_merge"' in page
    assert main([str(run), "--link-images"]) == 0
    linked = (run / "report.html").read_text(encoding="utf-8")
    assert 'src="01_vocab_merge/figures/ko_lengths.png"' in linked and "base64" not in linked


def test_rewrite_is_identical_and_leaves_no_temp_files(run):
    write_report(run)
    first = (run / "report.md").read_bytes(), (run / "report.html").read_bytes()
    write_report(run)
    assert ((run / "report.md").read_bytes(), (run / "report.html").read_bytes()) == first
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ["params_toy.yaml", "report.html", "report.md"]


def test_unreadable_metrics_are_reported_not_fatal(run):
    (run / "01_vocab_merge" / "metrics.json").write_text("{not json")
    md = write_report(run).read_text(encoding="utf-8")
    assert "`metrics.json` is not readable JSON" in md


def test_cli(run, tmp_path, capsys):
    assert main([str(run)]) == 0
    assert str(run / "report.md") in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err


def test_formatting():
    assert [fmt(v) for v in (None, True, 12345, 0.123456, 165433.879, "a")] == \
        ["–", "true", "12,345", "0.1235", "165,433.9", "a"]
    assert fmt({"old": 1, "new": 2}) == "1 → 2" and fmt([1, 2, 3]) == "[3 items]"
    assert headline("02_embedding_init", {"nothing": {"deep": 1}}) == []
    assert headline("01_x", {"merge_mode": "all", "other": 1}) == [("merge_mode", "all")]
