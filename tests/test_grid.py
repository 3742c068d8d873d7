"""The grid runner (lib.run.grid): identical stages run once and are linked, a finished condition is
not rerun, the table and figure read each condition's 08, and the a6000 grid checks clean."""
from __future__ import annotations

import json
import time

import pytest
import torch
import yaml

from lib.core import paths
from lib.core.params import ParamsError, load_profile
from lib.run import grid as G
from lib.run.check import check_profile
from lib.run.stages import select_stages


def write_grid(tmp_path, base, conditions, defaults=None, name="g"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"base": str(base), "defaults": defaults or {}, "conditions": conditions}),
                 encoding="utf-8")
    return f


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


def test_slurm_scripts_for_the_a6000_grid(tmp_path, outputs, monkeypatch):
    import subprocess

    from lib.run.gridslurm import render
    monkeypatch.setattr(G, "check_grid", lambda grid, names: [])   # as if data/ held the a6000 files
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
    from lib.cli.grid import main
    g = paths.PARAMS / "grids" / "toy_transfer.yaml"
    assert main(["done", str(g), "word", "03"]) == 1
    assert main(["link", str(g), "word"]) == 0


# ---------------------------------------------------------------------------- checked before anything runs

def test_every_structural_problem_of_a_grid_file_at_once_at_its_line(tmp_path, outputs):
    f = tmp_path / "bad.yaml"
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\n"          # 1
                 "name: ../../x\n"                                 # 2
                 "extra: 1\n"                                      # 3
                 "defaults:\n"                                     # 4
                 "  05_stage3_pretrain: 3\n"                       # 5
                 "conditions:\n"                                   # 6
                 "  a: {}\n"                                       # 7
                 "  b c: {}\n"                                     # 8
                 "  d: {04_stage2_lm_head: [1]}\n")                # 9
    with pytest.raises(ParamsError) as e:
        G.load_grid(f)
    assert e.value.problems == [
        f"{f}:3: unknown key 'extra' (a grid has base, defaults, conditions, name, slurm, "
        "seeds, seed_stages, reference)",
        f"{f}:2: name '../../x' must be a folder name under {outputs.resolve()} (no '..', not absolute): "
        "the grid writes outputs/<name>/",
        f"{f}:5: section '05_stage3_pretrain' must be a mapping of key: value, got 3",
        f"{f}:8: condition name 'b c' must be letters, digits, _ or -",
        f"{f}:9: section '04_stage2_lm_head' must be a mapping of key: value, got [1]"]
    assert not (outputs.parent / "x").exists() and not any(outputs.iterdir())
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\nname: {paths.PROJ_ROOT / 'lib' / 'evil'}\nconditions: {{a: {{}}}}\n")
    with pytest.raises(ParamsError, match=r":2: name .* must be a folder name under"):
        G.load_grid(f)
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\nconditions:\n  a: {{}}\n  a: {{}}\n")
    with pytest.raises(ParamsError, match=r":4: key 'a' is given twice \(first on line 3\)"):
        G.load_grid(f)


def test_a_bad_later_condition_stops_the_grid_before_anything_runs(tmp_path, outputs, monkeypatch, capsys):
    from lib.cli.pipeline import main
    ran = []
    monkeypatch.setattr(G, "run_pipeline", lambda *a, **k: ran.append(a) or [])
    f = tmp_path / "g.yaml"
    f.write_text(f"base: {paths.PARAMS / 'micro.yaml'}\n"        # 1
                 "defaults:\n"                                     # 2
                 "  08_agreement_analysis: {prediction: acc_max}\n"   # 3
                 "conditions:\n"                                   # 4
                 "  a: {}\n"                                       # 5
                 "  b:\n"                                          # 6
                 "    03_stage1_contrastive:\n"                    # 7
                 "      steps: -5\n"                               # 8
                 "  c:\n"                                          # 9
                 "    05_stage3_pretrain: {tasks+: {x: 1}}\n")     # 10
    t0 = time.time()
    assert main(["grid", str(f)]) == 1
    assert time.time() - t0 < 20 and ran == []
    err = capsys.readouterr().err
    assert f"error: {f}:3: 08_agreement_analysis.prediction: prediction must be one of" in err
    assert err.count("08_agreement_analysis.prediction") == 1 and "[every condition]" in err
    assert f"error: {f}:8: 03_stage1_contrastive.steps: steps and grad_accum must be >= 1, got -5, 1 [condition b]" in err
    assert f"error: {f}:10: " in err and "[condition c]" in err
    assert "conditions/b.yaml" not in err and "Traceback" not in err
    # --only checks only what it runs; an empty or unknown --only is refused
    assert main(["grid", str(f), "--only", "b"]) == 1
    err = capsys.readouterr().err
    assert "[condition b]" in err and "[condition c]" not in err
    for only, msg in (("", "--only '' names no condition"), (" , ", "names no condition"),
                      ("a,zz", "has no condition zz (conditions: a, b, c)")):
        assert main(["grid", str(f), "--only", only]) == 1
        assert msg in capsys.readouterr().err
    assert main(["grid", str(f), "--only", "b", "--slurm"]) == 1         # --slurm checks too
    assert "[condition b]" in capsys.readouterr().err
    assert ran == [] and not (outputs / "g" / "slurm").exists()


def test_slurm_honours_only_and_refuses_missing_inputs(tmp_path, outputs, monkeypatch, capsys):
    from lib.cli.pipeline import main
    from lib.run.gridslurm import render
    a6000 = paths.PARAMS / "grids" / "a6000_transfer.yaml"
    if not (paths.PROJ_ROOT / "data" / "parallel").exists():
        assert main(["grid", str(a6000), "--slurm"]) == 1
        err = capsys.readouterr().err
        assert "data/parallel/train.ko" in err and "nothing was run" in err
        assert not (outputs / "a6000_transfer" / "slurm").exists()
    monkeypatch.setattr(G, "check_grid", lambda grid, names: [])
    array = render(a6000, "word,head_new_rows")["array"].read_text()
    assert "#SBATCH --array=0-1" in array and "CONDITIONS=(word head_new_rows)" in array
    f = tmp_path / "s.yaml"
    f.write_text(f"base: {paths.PARAMS / 'toy.yaml'}\nslurm:\n  gpu: 2\nconditions: {{a: {{}}}}\n")
    with pytest.raises(ParamsError, match=r"s.yaml:3: slurm.gpu is not a setting"):
        render(f)
