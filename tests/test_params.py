"""Profiles are validated against the notebooks' parameters cells before anything runs."""
from __future__ import annotations

import json

import nbformat
import pytest

from lib.core import params as P
from lib.core import paths
from lib.core.hashing import config_hash
from lib.core.params import ParamsError, check_type, load_profile, notebook_params, stage_params, validate_profile
from lib.core.stage import resolve


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_parameters_cell_is_the_schema():
    p = notebook_params("01_vocab_merge")
    assert list(p)[:3] == ["run", "seed", "base_model"]
    assert p["merge_mode"].default == "all"
    assert "union" in p["merge_mode"].comment
    assert p["korean_vocab_size"].default == 8000


def test_every_notebook_has_literal_documented_parameters():
    for stage in paths.stages():
        for name, p in notebook_params(stage).items():
            assert p.comment, f"{stage}: parameter '{name}' has no comment"


def test_non_literal_parameter_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("run = 'x'\nseed = int('3')")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "99_bad.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(ParamsError, match=r"line 2.*'seed' must be a literal"):
        notebook_params("99_bad", path)


def test_unknown_key_names_key_file_and_notebook(tmp_path):
    f = write(tmp_path / "p.yaml", "01_vocab_merge:\n  merge_mod: hangul\n")
    with pytest.raises(ParamsError) as e:
        validate_profile(load_profile(f), ["01_vocab_merge"])
    msg = str(e.value)
    assert "merge_mod" in msg and str(f) in msg and "notebooks/01_vocab_merge.ipynb" in msg


def test_unknown_common_key_and_unknown_section(tmp_path):
    f = write(tmp_path / "p.yaml", "common:\n  base_modle: toy\n")
    with pytest.raises(ParamsError, match="common key 'base_modle'"):
        validate_profile(load_profile(f), [])
    f = write(tmp_path / "q.yaml", "01_vocab_mrege:\n  merge_mode: all\n")
    with pytest.raises(ParamsError, match="section '01_vocab_mrege' names no notebook"):
        validate_profile(load_profile(f), [])


def test_run_is_reserved(tmp_path):
    f = write(tmp_path / "p.yaml", "common:\n  run: elsewhere\n")
    with pytest.raises(ParamsError, match="set by the runner"):
        validate_profile(load_profile(f), [])


def test_wrong_type_fails_before_running(tmp_path):
    f = write(tmp_path / "p.yaml", "01_vocab_merge:\n  korean_vocab_size: '8000'\n")
    with pytest.raises(ParamsError, match=r"'korean_vocab_size' must be int.*got str"):
        validate_profile(load_profile(f), ["01_vocab_merge"])


def test_types_int_widens_to_float_but_bool_is_not_int():
    assert check_type("lr", 1, 0.5, "x") == 1.0 and isinstance(check_type("lr", 1, 0.5, "x"), float)
    with pytest.raises(ParamsError):
        check_type("steps", True, 10, "x")
    with pytest.raises(ParamsError):
        check_type("flag", 1, False, "x")


def test_extends_overlays_and_section_beats_common(tmp_path):
    write(tmp_path / "base.yaml", "common:\n  seed: 1\n  base_model: toy\n"
                                  "01_vocab_merge:\n  merge_mode: all\n  korean_vocab_size: 100\n")
    f = write(tmp_path / "child.yaml", "extends: base.yaml\ncommon:\n  seed: 7\n"
                                       "01_vocab_merge:\n  merge_mode: hangul\n")
    prof = load_profile(f)
    v = stage_params(prof, "01_vocab_merge", tmp_path / "run")
    assert (v["seed"], v["merge_mode"], v["korean_vocab_size"]) == (7, "hangul", 100)
    assert v["run"] == str(tmp_path / "run")


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_profile(tmp_path / "a.yaml")


def test_config_hash_ignores_run_location():
    a = {"run": "/x", "seed": 1}
    assert config_hash(a) == config_hash({"run": "/y", "seed": 1})
    assert config_hash(a) != config_hash({"run": "/x", "seed": 2})


def test_resolve_writes_config_and_refuses_a_finished_stage(tmp_path):
    ns = {name: p.default for name, p in notebook_params("01_vocab_merge").items()}
    ns["run"] = str(tmp_path / "r")
    cfg = resolve("01_vocab_merge", ns)
    conf = json.loads((cfg.stage_dir / "config.json").read_text())
    assert conf["params"]["merge_mode"] == "all" and conf["versions"]["torch"].startswith("2.13")
    import torch
    assert conf["torch_threads"] == torch.get_num_threads() >= 1
    assert cfg.path("{toy}/x.txt") == tmp_path / "r" / "00_toy_world" / "x.txt"
    (cfg.stage_dir / "DONE").write_text("{}")
    with pytest.raises(FileExistsError, match="finished stage"):
        resolve("01_vocab_merge", ns)
    ns2 = dict(ns, korean_vocab_size="big")
    with pytest.raises(ParamsError, match="korean_vocab_size"):
        resolve("01_vocab_merge", ns2)


def test_input_dir_requires_a_finished_stage(tmp_path):
    ns = {name: p.default for name, p in notebook_params("02_embedding_init").items()}
    ns["run"] = str(tmp_path / "r")
    cfg = resolve("02_embedding_init", ns)
    with pytest.raises(FileNotFoundError, match="needs the output of 01_vocab_merge"):
        cfg.input_dir("01_vocab_merge")


def test_shipped_profiles_validate():
    from lib.run.stages import select_stages
    for f in sorted(paths.PARAMS.rglob("*.yaml")):
        if "accelerate" in f.parts:
            continue
        if "grids" in f.parts:                 # grid files (lib.run.grid): each condition is a profile
            from lib.run.grid import load_grid, overlay
            g = load_grid(f)
            for name in g.runs:                      # replicates (<condition>-s<seed>) when seeded
                assert set(overlay(g, name)) <= set(load_profile(g.base).sections) | {"pipeline"} | set(paths.stages()), name
            continue
        prof = load_profile(f)
        validate_profile(prof, select_stages(prof))


def test_papermill_sees_the_same_parameters():
    """Papermill parses the cell itself and skips, with a warning, any line holding a second "="
    (even in a comment): keep both views equal."""
    import papermill as pm
    for stage in paths.stages():
        assert list(pm.inspect_notebook(str(paths.notebook_path(stage)))) == list(notebook_params(stage)), stage


def test_every_structural_problem_is_listed_at_once_with_its_line(tmp_path):
    write(tmp_path / "base.yaml", "common:\n  seed: 1\n01_vocab_merge:\n  merge_mode: all\n")
    f = write(tmp_path / "p.yaml", "extends: base.yaml\ncommon:\n  base_modle: toy\n"
                                   "01_vocab_merge:\n  merge_mod: hangul\n  korean_vocab_size: '8000'\n"
                                   "99_nothing:\n  x: 1\n")
    with pytest.raises(ParamsError) as e:
        validate_profile(load_profile(f), ["01_vocab_merge"])
    assert [p.split(": ", 1)[0] for p in e.value.problems] == [f"{f}:3", f"{f}:5", f"{f}:7", f"{f}:6, section '01_vocab_merge' (notebook 01_vocab_merge)"]
    assert str(e.value).startswith("4 problems:\n")


def test_duplicate_key_and_empty_file_are_errors(tmp_path):
    f = write(tmp_path / "p.yaml", "01_vocab_merge:\n  merge_mode: all\n  merge_mode: hangul\n")
    with pytest.raises(ParamsError, match=r"p.yaml:3: key 'merge_mode' is given twice \(first on line 2\)"):
        load_profile(f)
    f = write(tmp_path / "q.yaml", "common:\n  seed: 1\ncommon:\n  seed: 2\n")
    with pytest.raises(ParamsError, match=r"q.yaml:3: key 'common' is given twice"):
        load_profile(f)
    with pytest.raises(ParamsError, match="the params file is empty"):
        load_profile(write(tmp_path / "e.yaml", "\n# only a comment\n"))


def test_tasks_compose_add_and_remove_along_extends(tmp_path):
    """A profile adds a pair to the notebook's default tasks and removes one by name, without
    restating the list; adds accumulate along extends; a removed name that is not there fails."""
    write(tmp_path / "base.yaml", "07_benchmark_eval:\n  tasks+:\n    a: {en: x, ko: y, format: arc}\n")
    f = write(tmp_path / "child.yaml", "extends: base.yaml\n07_benchmark_eval:\n"
              "  tasks+:\n    b: {en: x, ko: y, format: arc}\n  tasks-: [ghost]\n")
    prof = P.load_profile(f)
    tasks = P.stage_params(prof, "07_benchmark_eval", "r")["tasks"]
    default = P.notebook_params("07_benchmark_eval")["tasks"].default
    assert list(tasks) == [k for k in default if k != "ghost"] + ["a", "b"]
    assert P.profile_problems(prof, ["07_benchmark_eval"]) == []
    bad = write(tmp_path / "bad.yaml", "07_benchmark_eval:\n  tasks-: [nope]\n  seed+: {x: 1}\n")
    problems = P.profile_problems(P.load_profile(bad), ["07_benchmark_eval"])
    assert any("bad.yaml:2" in p and "'tasks-' removes ['nope']" in p for p in problems)
    assert any("bad.yaml:3" in p and "'seed+' composes a mapping" in p for p in problems)
