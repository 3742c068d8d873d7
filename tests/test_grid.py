"""The grid runner (lib.grid): identical stages run once and are linked, a finished condition is
not rerun, the table and figure read each condition's 08, and the a6000 grid checks clean."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from lib import grid as G
from lib import paths
from lib.check import check_profile
from lib.params import load_profile
from lib.pipeline import select_stages


def write_grid(tmp_path, base, conditions, defaults=None, name="g"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"base": str(base), "defaults": defaults or {}, "conditions": conditions}),
                 encoding="utf-8")
    return f


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setattr(paths, "OUTPUTS", out)
    return out


def test_owners_follow_the_chain_of_parameters(tmp_path, outputs):
    g = G.load_grid(paths.PARAMS / "grids" / "toy_transfer.yaml")
    plans = G.plan(g)
    own = {n: p["owner"] for n, p in plans.items()}
    assert all(o["00_toy_world"] == "recipe" and o["02_embedding_init"] == "recipe" for o in own.values())
    assert own["head_new_rows"]["03_stage1_contrastive"] == "recipe"       # changes only 04
    assert own["head_new_rows"]["04_stage2_lm_head"] == "head_new_rows"
    assert own["code_switch"]["04_stage2_lm_head"] == "recipe"             # changes only 05
    assert own["word"]["03_stage1_contrastive"] == "word"
    # same 04 parameters, but without 03 before it: not the same stage
    assert "03_stage1_contrastive" not in own["no_stage1"]
    assert own["no_stage1"]["04_stage2_lm_head"] == "no_stage1"
    cond = load_profile(plans["combined"]["file"])
    assert cond.sections["03_stage1_contrastive"] == {"objective": "both", "layers": "all", "align_head": True}
    assert cond.sections["07_benchmark_eval"]["include_checkpoints"] is False


def test_a6000_grid_checks_clean_apart_from_data_files(tmp_path, outputs):
    g = G.load_grid(paths.PARAMS / "grids" / "a6000_transfer.yaml")
    plans = G.plan(g)
    assert set(plans) == set(G.load_grid(paths.PARAMS / "grids" / "toy_transfer.yaml").conditions)
    for name, p in plans.items():
        prof = load_profile(p["file"])
        problems = check_profile(prof, select_stages(prof), p["run"])
        # a6000 asks for device: cuda; on a machine without a GPU check says so (and nothing else may show)
        other = [x for x in problems if "file not found" not in x and "does not exist" not in x
                 and ("torch sees no GPU" not in x or torch.cuda.is_available())]
        assert other == [], (name, other)
        if name in ("word", "combined", "align_head"):
            assert any("word_pairs" in x for x in problems)     # the dictionary is the user's to give


def test_bad_grid_files_fail_clearly(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("base: nowhere.yaml\nconditions: {a: {}}\n")
    with pytest.raises(Exception, match="base profile not found"):
        G.load_grid(f)
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\nconditions: {{}}\n")
    with pytest.raises(Exception, match="at least one name"):
        G.load_grid(f)
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\nconditions: {{a: {{}}}}\nextra: 1\n")
    with pytest.raises(Exception, match="unknown key 'extra'"):
        G.load_grid(f)


def test_table_and_figure_from_summaries(tmp_path, outputs):
    f = write_grid(tmp_path, paths.PARAMS / "toy.yaml", {"a": {}, "b": {"04_stage2_lm_head": {"train_rows": "new"}}})
    g = G.load_grid(f)
    plans = G.plan(g)

    def row(model, kind, tr, cell="knowledge"):
        return {"model": model, "kind": kind, "cell": cell, "acc_en": 0.9, "acc_ko": 0.3, "kappa": tr / 2,
                "kappa_lo": tr / 2 - 0.1, "kappa_hi": tr / 2 + 0.1, "transfer_ratio": tr,
                "transfer_ratio_lo": tr - 0.1, "transfer_ratio_hi": tr + 0.1, "n": 10}
    for name, last in (("a", 0.1), ("b", 0.4)):
        d = paths.stage_dir(plans[name]["run"], "08_agreement_analysis")
        d.mkdir(parents=True)
        rows = [row("control-oracle", "control", 1.0), row("control-oracle_deranged", "control", 0.0),
                row("03_stage1_contrastive", "stage", 0.05), row("06_instruction_tuning", "stage", last),
                row("06_instruction_tuning", "stage", 0.9, cell="ghost")]
        (d / "summary.json").write_text(json.dumps({"rows": rows}))
    table = G.collect(g, plans)
    assert [(r["condition"], r["model"]) for r in table] == [
        ("(controls)", "control-oracle"), ("(controls)", "control-oracle_deranged"),
        ("a", "03_stage1_contrastive"), ("a", "06_instruction_tuning"),
        ("b", "03_stage1_contrastive"), ("b", "06_instruction_tuning")]
    assert [r["transfer_ratio"] for r in G.final_of_conditions(table)] == [0.1, 0.4]
    assert [(r["condition"], r["model"][:2]) for r in G.stage_rows(table)] == [   # what the figure draws
        ("a", "03"), ("a", "06"), ("b", "03"), ("b", "06")]
    out = G.write_outputs(g, table)
    md = out["md"].read_text()
    assert "| b | 06_instruction_tuning | 0.900 | 0.300 | 0.200 [0.10, 0.30] | 0.400 [0.30, 0.50] |" in md
    assert out["figure"].stat().st_size > 10_000


@pytest.mark.slow
def test_micro_grid_shares_stages_and_resumes(tmp_path, outputs, capsys):
    """Three conditions on the micro profile (06-08 skipped): the toy world and 01-02 run once,
    03 once for the two conditions that share it; a second call runs nothing."""
    f = write_grid(tmp_path, paths.PARAMS / "micro.yaml",
                   {"recipe": {}, "word": {"03_stage1_contrastive": {"objective": "word"}},
                    "rows": {"04_stage2_lm_head": {"train_rows": "new"}}},
                   defaults={"pipeline": {"skip": ["06", "07", "08"]}}, name="micro_grid")
    out = G.run_grid(f, progress=False)
    runs = out["runs"]
    assert runs["recipe"]["ran"] == ["00_toy_world", "01_vocab_merge", "02_embedding_init",
                                     "03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain"]
    assert runs["word"]["linked"] == ["00_toy_world", "01_vocab_merge", "02_embedding_init"]
    assert runs["word"]["ran"] == ["03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain"]
    assert runs["rows"]["linked"][-1] == "03_stage1_contrastive"
    assert runs["rows"]["ran"] == ["04_stage2_lm_head", "05_stage3_pretrain"]
    root = outputs / "micro_grid"
    assert (root / "rows" / "03_stage1_contrastive").is_symlink()
    assert (root / "rows" / "03_stage1_contrastive").resolve() == (root / "recipe" / "03_stage1_contrastive").resolve()
    word = json.loads((root / "word" / "03_stage1_contrastive" / "metrics.json").read_text())
    assert word["objective"] == "word" and word["word_spans"]["word_occurrences"] > 0
    rows = json.loads((root / "rows" / "04_stage2_lm_head" / "metrics.json").read_text())
    assert rows["train_rows"] == "new"
    again = G.run_grid(f, progress=False)["runs"]
    assert all(r["ran"] == [] for r in again.values())
    assert "finished, not rerun" in capsys.readouterr().out


def test_slurm_scripts_for_the_a6000_grid(tmp_path, outputs):
    import subprocess
    from lib.gridslurm import render
    files = render(paths.PARAMS / "grids" / "a6000_transfer.yaml")
    shared, array = files["shared"].read_text(), files["array"].read_text()
    for text in (shared, array):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0   # valid shell
        assert "sbatch " not in text                                                   # submits nothing
    # shared: what several conditions use, once, in the owner's folder: 01-02 for all, 03 (recipe's,
    # also head_new_rows', code_switch's and keep_align's) and 04 (also theirs)
    assert [ln.split(" || ")[0].split()[-1] for ln in shared.splitlines() if " || " in ln] == ["01", "02", "03", "04"]
    assert "-m lib.train 03" in shared and "accelerate launch --config_file params/accelerate/ddp.yaml" in shared
    assert "#SBATCH --array=0-9" in array and "CONDITIONS=(recipe no_stage1 word both" in array
    blocks = dict(b.split(")\n", 1) for b in array.split('case "$COND" in\n')[1].split("esac")[0].split(";;\n") if ")" in b)
    blocks = {k.strip(): v for k, v in blocks.items()}
    trained = {k: [ln.split(" || ")[0].split()[-1] for ln in v.splitlines() if " || " in ln] for k, v in blocks.items()}
    assert trained["recipe"] == ["05", "06", "07", "08"]
    assert trained["head_new_rows"] == ["04", "05", "06", "07", "08"]      # its 03 is recipe's
    assert trained["code_switch"] == ["05", "06", "07", "08"]
    assert trained["no_stage1"] == ["04", "05", "06", "07", "08"]
    assert trained["combined"] == ["03", "04", "05", "06", "07", "08"]
    assert files["submit"].startswith("SHARED=$(sbatch --parsable ") and "--dependency=afterok:$SHARED" in files["submit"]


def test_grid_cli_done_and_link(tmp_path, outputs):
    from lib.grid import main
    g = paths.PARAMS / "grids" / "toy_transfer.yaml"
    assert main(["done", str(g), "word", "03"]) == 1
    assert main(["link", str(g), "word"]) == 0
