"""Seeds in a grid (lib.run.gridseeds): the t-interval over seeds on hand-made numbers, the paired
differences against the reference, the keys checked at their lines, replicates that share stages
seed by seed, and a micro grid with two seeds run end to end."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from lib.core import paths
from lib.core.params import ParamsError, load_profile
from lib.core.stats import mean_interval, t_quantile
from lib.run import grid as G
from lib.run import gridseeds

# scipy.stats.t.ppf(0.975, df) (scipy 1.17.1), df -> quantile
T975 = {1: 12.706204736174694, 2: 4.302652729749462, 4: 2.7764451051977934, 9: 2.262157162798205,
        30: 2.0422724563012378}


def grid_file(tmp_path, text: str, name: str = "g"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text, encoding="utf-8")
    return f


# ---------------------------------------------------------------------------- statistics over seeds

def test_t_quantile_matches_scipy():
    for df, q in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(q, rel=1e-10, abs=0)
        assert t_quantile(0.025, df) == pytest.approx(-q, rel=1e-10, abs=0)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_interval_of_three_seeds():
    m = mean_interval([0.1, 0.2, 0.6])
    sd = math.sqrt((0.2 ** 2 + 0.1 ** 2 + 0.3 ** 2) / 2)          # sample sd: sqrt(0.07)
    half = T975[2] * sd / math.sqrt(3)
    assert m["n"] == 3
    assert abs(m["mean"] - 0.3) < 1e-12 and abs(m["sd"] - math.sqrt(0.07)) < 1e-12
    assert abs(m["lo"] - (0.3 - half)) < 1e-9 and abs(m["hi"] - (0.3 + half)) < 1e-9
    assert abs(m["hi"] - 0.9572410607728) < 1e-9                  # 0.3 + 4.30265 * 0.264575 / 1.73205
    # undefined values (a transfer ratio at chance) are left out; one value has no interval
    assert mean_interval([0.1, None, float("nan"), 0.6, 0.2]) == m
    one = mean_interval([0.4])
    assert one["mean"] == 0.4 and one["n"] == 1 and all(math.isnan(one[k]) for k in ("sd", "lo", "hi"))
    assert mean_interval([])["n"] == 0


def rep(cond, seed, model, tr, kappa=0.1, acc_en=0.9, acc_ko=0.5):
    return {"condition": cond, "seed": seed, "run": f"{cond}-s{seed}", "model": model, "kind": "stage",
            "acc_en": acc_en, "acc_ko": acc_ko, "kappa": kappa, "transfer_ratio": tr,
            "transfer_ratio_lo": tr - 0.1, "transfer_ratio_hi": tr + 0.1, "n": 250}


def test_over_seeds_means_intervals_and_paired_differences():
    control = {"condition": "(controls)", "model": "control-oracle", "kind": "control", "transfer_ratio": 1.0}
    rows = [control]
    for s, (r05, c05, r06) in {1: (0.40, 0.10, 0.20), 2: (0.50, 0.20, 0.30), 3: (0.45, 0.60, 0.10)}.items():
        rows += [rep("ref", s, "05_stage3_pretrain", r05), rep("ref", s, "06_instruction_tuning", r06),
                 rep("new", s, "05_stage3_pretrain", c05), rep("new", s, "06_instruction_tuning", r06 + 0.1 * s)]
    rows.append(rep("new", 4, "06_instruction_tuning", 0.9))       # a seed the reference lacks: not paired
    out = gridseeds.over_seeds(rows, reference="ref")
    assert out[0] is control
    by = {(r["condition"], r["model"][:2]): r for r in out[1:]}
    assert list(by) == [("ref", "05"), ("ref", "06"), ("new", "05"), ("new", "06")]
    ref05, new05, new06 = by["ref", "05"], by["new", "05"], by["new", "06"]
    assert ref05["n_seeds"] == 3 and ref05["seeds"] == [1, 2, 3] and "vs_reference" not in ref05
    assert abs(ref05["transfer_ratio"] - 0.45) < 1e-12
    sd = math.sqrt((0.05 ** 2 + 0.05 ** 2 + 0) / 2)
    assert abs(ref05["transfer_ratio_sd"] - sd) < 1e-12
    assert abs(ref05["transfer_ratio_lo"] - (0.45 - T975[2] * sd / math.sqrt(3))) < 1e-9
    assert abs(ref05["transfer_ratio_hi"] - (0.45 + T975[2] * sd / math.sqrt(3))) < 1e-9
    assert ref05["kappa"] == pytest.approx(0.1) and math.isclose(ref05["kappa_sd"], 0.0, abs_tol=1e-15)
    assert [p["transfer_ratio"] for p in ref05["per_seed"]] == [0.40, 0.50, 0.45]
    assert ref05["per_seed"][0]["transfer_ratio_lo"] == pytest.approx(0.30)      # the question-level interval
    # paired: new - ref per seed on 05 = -0.30, -0.30, +0.15
    d = new05["vs_reference"]["transfer_ratio"]
    diffs = [0.10 - 0.40, 0.20 - 0.50, 0.60 - 0.45]
    dm = sum(diffs) / 3
    dsd = math.sqrt(sum((x - dm) ** 2 for x in diffs) / 2)
    assert d["n"] == 3 and d["seeds"] == [1, 2, 3]
    assert abs(d["mean"] - dm) < 1e-12 and abs(d["sd"] - dsd) < 1e-12
    assert abs(d["lo"] - (dm - T975[2] * dsd / math.sqrt(3))) < 1e-9
    assert abs(d["hi"] - (dm + T975[2] * dsd / math.sqrt(3))) < 1e-9
    # 06: four seeds of its own (mean over four), paired on the three the reference has: +0.1, +0.2, +0.3
    assert new06["n_seeds"] == 4 and abs(new06["transfer_ratio"] - (0.3 + 0.5 + 0.4 + 0.9) / 4) < 1e-12
    d6 = new06["vs_reference"]["transfer_ratio"]
    assert d6["seeds"] == [1, 2, 3] and abs(d6["mean"] - 0.2) < 1e-12
    assert abs(d6["hi"] - (0.2 + T975[2] * 0.1 / math.sqrt(3))) < 1e-9
    assert new06["vs_reference"]["acc_en"]["mean"] == 0.0
    md = gridseeds.markdown(out, "ref")
    assert "| new | 05_stage3_pretrain | 3 |" in md and "Paired differences against `ref`" in md
    assert "t(0.975, n-1)·sd/√n" in md
    assert f"| new | 05_stage3_pretrain | +0.000 [0.00, 0.00] (n=3) | +0.000 [0.00, 0.00] (n=3) | " in md


def test_shared_models_keep_their_question_interval_and_leave_the_paired_table():
    """A model that is the same folder in every replicate (02; a stage outside seed_stages) reads its
    question-level interval, not a zero-width t-interval; a condition's stage model that is the
    reference's own on every seed (shared by the chain) is left out of the paired differences."""
    rows = []
    for s, tr in {1: 0.40, 2: 0.50, 3: 0.30}.items():
        for cond in ("ref", "new"):
            rows.append({**rep(cond, s, "02_embedding_init", 0.05), "model_dir": "/o/ref-s1/02"})
            rows.append({**rep(cond, s, "05_stage3_pretrain", tr), "model_dir": f"/o/ref-s{s}/05"})
        rows.append({**rep("ref", s, "06_instruction_tuning", tr), "model_dir": f"/o/ref-s{s}/06"})
        rows.append({**rep("new", s, "06_instruction_tuning", tr + 0.1), "model_dir": f"/o/new-s{s}/06"})
    out = gridseeds.over_seeds(rows, reference="ref")
    by = {(r["condition"], r["model"][:2]): r for r in out}
    init = by["ref", "02"]
    assert init["shared"] and init["transfer_ratio"] == 0.05
    assert (init["transfer_ratio_lo"], init["transfer_ratio_hi"]) == (pytest.approx(-0.05), pytest.approx(0.15))
    assert "transfer_ratio_sd" not in init
    assert not by["ref", "05"].get("shared") and by["ref", "05"]["transfer_ratio_hi"] > 0.6  # t over 3 seeds
    assert by["new", "05"]["vs_reference"]["shared"] and by["new", "02"]["vs_reference"]["shared"]
    assert "shared" not in by["new", "06"]["vs_reference"]
    assert by["new", "06"]["vs_reference"]["transfer_ratio"]["mean"] == pytest.approx(0.1)
    md = gridseeds.markdown(out, "ref")
    table, paired = md.split("## Paired differences")
    assert "| ref | 02_embedding_init | shared | " in table and "| new | 05_stage3_pretrain | 3 | " in table
    assert "| new | 06_instruction_tuning | +" in paired
    assert "| new | 05_stage3_pretrain |" not in paired and "| new | 02_embedding_init |" not in paired
    assert "Left out: 2 stage model(s)" in paired


# ---------------------------------------------------------------------------- the keys, checked strictly

def test_bad_seeds_keys_each_at_its_line(tmp_path, outputs):
    toy = paths.PARAMS / "toy.yaml"
    f = grid_file(tmp_path, f"base: {toy}\n"                          # 1
                  "seeds: [1, 2, 2, -1, true, x]\n"                    # 2
                  "seed_stages: [\"03\", \"99\"]\n"                    # 3
                  "reference: nosuch\n"                                # 4
                  "defaults:\n"                                        # 5
                  "  05_stage3_pretrain: {seed: 7}\n"                  # 6
                  "conditions:\n"                                      # 7
                  "  a: {}\n"                                          # 8
                  "  b: {}\n")                                         # 9
    with pytest.raises(ParamsError) as e:
        G.load_grid(f)
    assert e.value.problems == [
        f"{f}:2: seeds[2]: seed 2 is given twice; each seed is one replicate",
        f"{f}:2: seeds[3] must be an integer in [0, 2**32), got -1",
        f"{f}:2: seeds[4] must be an integer in [0, 2**32), got True",
        f"{f}:2: seeds[5] must be an integer in [0, 2**32), got 'x'",
        f"{f}:3: seed_stages: '99' is not a stage (stages: 00, 01, 02, 03, 04, 05, 06, 07, 08)",
        f"{f}:4: reference 'nosuch' must name a condition (conditions: a, b)"]
    f = grid_file(tmp_path, f"base: {toy}\nseeds: []\nreference: a\nseed_stages: [\"03\"]\n"
                  "conditions:\n  a: {06_instruction_tuning: {seed: 3}}\n")
    with pytest.raises(ParamsError) as e:
        G.load_grid(f)
    assert e.value.problems == [
        f"{f}:2: 'seeds' must be a non-empty list of distinct integers, e.g. [1, 2, 3], got []"]
    f = grid_file(tmp_path, f"base: {toy}\nreference: a\nseed_stages: [\"03\"]\nconditions:\n  a: {{}}\n")
    with pytest.raises(ParamsError) as e:
        G.load_grid(f)
    assert e.value.problems == [f"{f}:3: 'seed_stages' needs 'seeds' (the stages take the grid's seeds)",
                                f"{f}:2: 'reference' needs 'seeds': the differences are paired over seeds"]
    # a seed written by hand in a seed stage would be overwritten by the grid's
    f = grid_file(tmp_path, f"base: {toy}\nseeds: [1]\nconditions:\n  a: {{06_instruction_tuning: {{seed: 3}}}}\n"
                  "  b: {02_embedding_init: {seed: 3}}\n")
    with pytest.raises(ParamsError) as e:
        G.load_grid(f)
    assert e.value.problems == [
        f"{f}:4: 06_instruction_tuning.seed is set by the grid's 'seeds' in every replicate; remove it here"]


def test_replicates_share_stages_seed_by_seed(tmp_path, outputs):
    f = grid_file(tmp_path, f"base: {paths.PARAMS / 'toy.yaml'}\n"
                  "seeds: [1, 2]\nreference: recipe\n"
                  "conditions:\n"
                  "  recipe: {}\n"
                  "  late: {06_instruction_tuning: {lr: 1.0e-4}}\n"
                  "  early: {03_stage1_contrastive: {objective: word}}\n")
    g = G.load_grid(f)
    assert g.seeds == [1, 2] and g.reference == "recipe" and g.seed_stages == gridseeds.SEED_STAGES
    assert list(g.runs) == ["recipe-s1", "recipe-s2", "late-s1", "late-s2", "early-s1", "early-s2"]
    plans = G.plan(g)
    own = {n: p["owner"] for n, p in plans.items()}
    # the instrument once for the whole grid
    assert all(o[s] == "recipe-s1" for o in own.values() for s in ("00_toy_world", "01_vocab_merge", "02_embedding_init"))
    # 03-05 per seed: late shares recipe's of the same seed, never the other seed's
    for s in (1, 2):
        assert all(own[f"late-s{s}"][st] == f"recipe-s{s}" for st in
                   ("03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain"))
        assert own[f"late-s{s}"]["06_instruction_tuning"] == f"late-s{s}"
        assert own[f"early-s{s}"]["03_stage1_contrastive"] == f"early-s{s}"
    assert plans["recipe-s1"]["ids"]["03_stage1_contrastive"] != plans["recipe-s2"]["ids"]["03_stage1_contrastive"]
    prof = load_profile(plans["late-s2"]["file"])
    assert plans["late-s2"]["run"] == "g/late-s2" and plans["late-s2"]["file"].name == "late-s2.yaml"
    assert {s: prof.sections[s]["seed"] for s in gridseeds.SEED_STAGES} == dict.fromkeys(gridseeds.SEED_STAGES, 2)
    assert prof.sections["06_instruction_tuning"]["lr"] == 1.0e-4
    assert "seed" not in prof.sections.get("02_embedding_init", {})
    # --only names conditions (every seed of each), or one replicate
    assert G.selected(g, "late") == ["late-s1", "late-s2"]
    assert G.selected(g, "early-s2,recipe") == ["early-s2", "recipe-s1", "recipe-s2"]
    with pytest.raises(ParamsError, match="has no condition late-s3"):
        G.selected(g, "late-s3")


def test_slurm_writes_every_replicate(tmp_path, outputs, monkeypatch):
    from lib.run.gridslurm import render
    monkeypatch.setattr(G, "check_grid", lambda grid, names: [])
    f = grid_file(tmp_path, f"base: {paths.PARAMS / 'toy.yaml'}\nseeds: [1, 2]\n"
                  "conditions:\n  recipe: {}\n  late: {06_instruction_tuning: {lr: 1.0e-4}}\n")
    files = render(f)
    array, shared = files["array"].read_text(), files["shared"].read_text()
    assert "#SBATCH --array=0-3" in array and "CONDITIONS=(recipe-s1 recipe-s2 late-s1 late-s2)" in array
    steps = [ln.split(" || ")[0].split()[-1] for ln in shared.splitlines() if " || " in ln]
    assert steps == ["00", "01", "02", "03", "04", "05", "03", "04", "05"]   # 00-02 once, 03-05 once per seed
    assert "grid.md" in array and "--only $COND" in array
    assert G.selected(G.load_grid(f), "late-s2") == ["late-s2"]         # what a task's last line checks


def test_seeded_table_and_figure_from_summaries(tmp_path, outputs):
    f = grid_file(tmp_path, f"base: {paths.PARAMS / 'toy.yaml'}\nseeds: [1, 2, 3]\nreference: a\n"
                  "conditions:\n  a: {}\n  b: {05_stage3_pretrain: {lr: 1.0e-4}}\n")
    g = G.load_grid(f)
    plans = G.plan(g)
    values = {("a", 1): 0.40, ("a", 2): 0.50, ("a", 3): 0.45, ("b", 1): 0.60, ("b", 2): 0.55, ("b", 3): 0.80}

    def row(model, kind, tr, cell="knowledge"):
        return {"model": model, "kind": kind, "cell": cell, "acc_en": 0.9, "acc_en_lo": 0.85, "acc_en_hi": 0.95,
                "acc_ko": 0.3, "kappa": tr / 2, "kappa_lo": tr / 2 - 0.1, "kappa_hi": tr / 2 + 0.1,
                "transfer_ratio": tr, "transfer_ratio_lo": tr - 0.1, "transfer_ratio_hi": tr + 0.1, "n": 10}
    for (c, s), tr in values.items():
        d = paths.stage_dir(plans[f"{c}-s{s}"]["run"], "08_agreement_analysis")
        d.mkdir(parents=True)
        rows = [row("control-oracle", "control", 1.0), row("control-oracle_deranged", "control", 0.0),
                row("05_stage3_pretrain", "stage", tr), row("05_stage3_pretrain", "stage", 0.9, cell="ghost")]
        (d / "summary.json").write_text(json.dumps({"rows": rows}))
    table = G.collect(g, plans)
    assert [(r["condition"], r.get("seed")) for r in table][:4] == [
        ("(controls)", None), ("(controls)", None), ("a", 1), ("a", 2)]
    out = G.write_outputs(g, table)
    saved = json.loads(out["json"].read_text())
    assert saved["seeds"] == [1, 2, 3] and saved["reference"] == "a" and "t-interval" in saved["interval"]
    b = next(r for r in saved["rows"] if r["condition"] == "b")
    assert abs(b["transfer_ratio"] - 0.65) < 1e-12 and b["n_seeds"] == 3
    assert [p["transfer_ratio"] for p in b["per_seed"]] == [0.60, 0.55, 0.80]
    assert b["per_seed"][2]["transfer_ratio_lo"] == pytest.approx(0.70)
    assert abs(b["vs_reference"]["transfer_ratio"]["mean"] - 0.2) < 1e-12     # (0.2 + 0.05 + 0.35) / 3
    md = out["md"].read_text()
    assert "| b | 05_stage3_pretrain | 3 | 0.900 [0.90, 0.90] | 0.300 [0.30, 0.30] |" in md
    assert "| (controls) | control-oracle | - |" in md
    assert out["figure"].stat().st_size > 10_000


# ---------------------------------------------------------------------------- end to end on the micro profile

@pytest.mark.slow
def test_micro_grid_with_two_seeds(tmp_path, outputs):
    """Two seeds, two conditions that differ only in 08 (stages 03, 04 and 06 skipped, 07 on the
    knowledge cell): 00-02 run once, 05 and 07 once per seed (b links a's of the same seed)."""
    f = grid_file(tmp_path, yaml.safe_dump({
        "base": str(paths.PARAMS / "micro.yaml"), "seeds": [1, 2], "reference": "a",
        "defaults": {"pipeline": {"skip": ["03", "04", "06"]},
                     "02_embedding_init": {"controls": ["oracle", "oracle_deranged"]},
                     "07_benchmark_eval": {"include_checkpoints": False, "extra_tasks": {},
                                           "tasks-": ["bridge_heldout", "ghost"]}},
        "conditions": {"a": {}, "b": {"08_agreement_analysis": {"n_boot": 50}}}}), name="micro_seeds")
    runs = G.run_grid(f, progress=False)["runs"]
    root = outputs / "micro_seeds"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and "-s" in p.name) == ["a-s1", "a-s2", "b-s1", "b-s2"]
    assert runs["a-s1"]["ran"] == ["00_toy_world", "01_vocab_merge", "02_embedding_init", "05_stage3_pretrain",
                                   "07_benchmark_eval", "08_agreement_analysis"]
    assert runs["a-s2"]["linked"] == ["00_toy_world", "01_vocab_merge", "02_embedding_init"]
    assert runs["a-s2"]["ran"] == ["05_stage3_pretrain", "07_benchmark_eval", "08_agreement_analysis"]
    for s in (1, 2):
        assert runs[f"b-s{s}"]["ran"] == ["08_agreement_analysis"]
        assert (root / f"b-s{s}" / "05_stage3_pretrain").resolve() == (root / f"a-s{s}" / "05_stage3_pretrain").resolve()
    for r in ("a-s2", "b-s1", "b-s2"):
        assert (root / r / "00_toy_world").resolve() == (root / "a-s1" / "00_toy_world").resolve()
    conf = {s: json.loads((root / f"a-s{s}" / "05_stage3_pretrain" / "config.json").read_text()) for s in (1, 2)}
    assert conf[1]["seed"] == 1 and conf[2]["seed"] == 2
    w = {s: (root / f"a-s{s}" / "05_stage3_pretrain" / "model" / "model.safetensors").read_bytes() for s in (1, 2)}
    assert w[1] != w[2]                                                # another seed, another model

    saved = json.loads((root / "grid.json").read_text())
    for cond in ("a", "b"):
        row = next(r for r in saved["rows"] if r["condition"] == cond and r["model"] == "05_stage3_pretrain")
        per = []
        for s in (1, 2):
            summary = json.loads((root / f"{cond}-s{s}" / "08_agreement_analysis" / "summary.json").read_text())
            per.append(next(r for r in summary["rows"] if r.get("cell") == "knowledge"
                            and r["model"] == "05_stage3_pretrain"))
        assert row["n_seeds"] == 2 and row["seeds"] == [1, 2]
        for m in gridseeds.METRICS:
            vals = [p[m] for p in per if isinstance(p[m], (int, float)) and math.isfinite(p[m])]
            assert [p[m] for p in row["per_seed"]] == [p[m] for p in per]
            if vals:
                assert row[f"{m}_n"] == len(vals) and abs(row[m] - sum(vals) / len(vals)) < 1e-12
    b = next(r for r in saved["rows"] if r["condition"] == "b" and r["model"] == "05_stage3_pretrain")
    assert b["vs_reference"]["acc_ko"]["mean"] == 0.0                  # same models, same answers
    assert b["vs_reference"]["shared"]                                  # found by the links, not the zeros
    paired = (root / "grid.md").read_text().split("## Paired")[1]
    assert "| b | 05_stage3_pretrain |" not in paired and "None to show" in paired
    assert "| a | 05_stage3_pretrain | 2 |" in (root / "grid.md").read_text()
    assert (root / "figures" / "grid.png").stat().st_size > 10_000
