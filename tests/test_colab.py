"""The generated Colab notebooks: fresh, deterministic, same parameters, guarded install cell.

If ``test_committed_colab_notebooks_are_fresh`` fails, run ``python -m lib.cli.colab`` and commit
``notebooks/colab/``: never edit those files by hand.
"""
from __future__ import annotations

import ast
import shutil

import nbformat
import papermill as pm
import pytest

from lib.cli import colab as colab_cli
from lib.core import paths
from lib.core.params import notebook_params
from lib.run import colab

SOURCES = colab.sources()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("colab")
    colab.generate(paths.NOTEBOOKS, out)
    return out


def test_committed_colab_notebooks_are_fresh(generated):
    want = {p.name: p.read_bytes() for p in generated.glob("*.ipynb")}
    have = {p.name: p.read_bytes() for p in paths.COLAB_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    missing, orphans = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    outdated = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    assert not (missing or orphans or outdated), (
        f"notebooks/colab/ is stale (missing {missing}, orphans {orphans}, outdated {outdated}); "
        f"run `python -m lib.cli.colab` and commit the result")


def test_one_colab_notebook_per_source(generated):
    assert SOURCES, "no notebooks/NN_*.ipynb found"
    assert sorted(p.name for p in generated.glob("*.ipynb")) == [p.name for p in SOURCES]


def test_deterministic_and_check_mode(tmp_path, generated):
    again = tmp_path / "again"
    colab.generate(paths.NOTEBOOKS, again)
    for p in generated.glob("*.ipynb"):
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
    assert colab.generate(paths.NOTEBOOKS, again) == []          # nothing rewritten when fresh
    assert colab_cli.main(["--check", "--out", str(again)]) == 0
    # a hand edit, a missing file and an orphan are all reported, and --check writes nothing
    victim = again / SOURCES[0].name
    victim.write_text(victim.read_text(encoding="utf-8").replace("Colab", "Kolab"), encoding="utf-8")
    (again / SOURCES[-1].name).unlink()
    shutil.copy(victim, again / "99_gone.ipynb")
    problems = colab.stale(paths.NOTEBOOKS, again)
    assert any("stale" in p and SOURCES[0].name in p for p in problems)
    assert any("missing" in p and SOURCES[-1].name in p for p in problems)
    assert any("orphan" in p and "99_gone" in p for p in problems)
    assert colab_cli.main(["--check", "--out", str(again)]) == 1
    assert not (again / SOURCES[-1].name).exists()
    colab.generate(paths.NOTEBOOKS, again)
    assert colab.stale(paths.NOTEBOOKS, again) == [] and not (again / "99_gone.ipynb").exists()


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_structure_and_parameters(src, generated):
    out = generated / src.name
    nb = nbformat.read(str(out), as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    badge, install, device = nb.cells[:3]
    assert badge.cell_type == "markdown" and colab.badge_url(src.stem) in badge.source
    assert f"github/{colab.REPO}/blob/" in badge.source and "colab-badge.svg" in badge.source
    assert "nvidia-smi" in device.source and "fp32" in device.source
    # the original cells follow, unchanged but for the note on top of the parameters cell
    orig = nbformat.read(str(src), as_version=4).cells
    assert len(nb.cells) == len(orig) + 3
    for a, b in zip(orig, nb.cells[3:]):
        assert a.cell_type == b.cell_type and a.metadata.get("tags", []) == b.metadata.get("tags", [])
        if "parameters" in a.metadata.get("tags", []):
            assert b.source == colab.parameters_note(src.stem, notebook_params(src.stem, src)) + "\n" + a.source
        else:
            assert a.source == b.source
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    assert len({c.id for c in nb.cells}) == len(nb.cells)
    # parameters: the same for papermill and for lib.core.params (names, defaults, comments)
    assert pm.inspect_notebook(str(out)) == pm.inspect_notebook(str(src))
    assert notebook_params(src.stem, out) == notebook_params(src.stem, src)


def guarded_body(source: str) -> list[ast.stmt]:
    """Statements of the install cell: imports, then one `if "google.colab" in sys.modules:`."""
    tree = ast.parse(source)
    *head, last = tree.body
    assert all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in head), "only imports before the guard"
    assert isinstance(last, ast.If) and not last.orelse
    assert ast.unparse(last.test) == "'google.colab' in sys.modules"
    return last.body


def test_install_cell_is_guarded_and_keeps_colab_torch(generated):
    src = (generated / SOURCES[0].name).read_text(encoding="utf-8")
    install = nbformat.reads(src, as_version=4).cells[1]
    assert install.cell_type == "code"
    body = ast.unparse(ast.Module(body=guarded_body(install.source), type_ignores=[]))
    assert f"https://github.com/{colab.REPO}.git" in body and "os.chdir" in body
    assert "'--no-deps', '-e', '.'" in body
    deps = colab.colab_dependencies()
    assert deps and all(repr(d) in body for d in deps)
    assert not any(d.split("=")[0].strip() == "torch" for d in deps) and "'torch" not in body
    # off Colab the cell does nothing at all
    namespace: dict = {}
    exec(compile(install.source, "install", "exec"), namespace)
    assert set(namespace) - {"__builtins__"} == {"os", "subprocess", "sys"}


def test_dependencies_leave_out_what_colab_provides(tmp_path):
    f = tmp_path / "pyproject.toml"
    f.write_text('[project]\nname = "x"\ndependencies = ["torch==2.13.0", "torchvision", "numpy>=1", '
                 '"ipykernel >= 6", "jupyterlab>=4", "lm-eval[hf]>=0.4"]\n', encoding="utf-8")
    assert colab.colab_dependencies(f) == ["torchvision", "numpy>=1", "lm-eval[hf]>=0.4"]


def test_install_cell_on_a_simulated_colab(generated, monkeypatch):
    """With ``google.colab`` imported, the cell clones, changes into the clone and runs two pip
    installs: the package without dependencies, then the dependencies without torch."""
    import os
    import subprocess
    import sys
    import types
    cell = nbformat.read(str(generated / SOURCES[0].name), as_version=4).cells[1]
    calls, dirs = [], []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    monkeypatch.setattr(os, "chdir", dirs.append)
    exec(compile(cell.source, "install", "exec"), {})
    clone, pkg, deps = calls
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [f"https://github.com/{colab.REPO}.git", colab.CLONE_DIR]
    assert dirs == [colab.CLONE_DIR]
    assert pkg == [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", "."]
    assert deps[:5] == [sys.executable, "-m", "pip", "install", "-q"] and deps[5:] == colab.colab_dependencies()


@pytest.mark.parametrize("cuda,capability", [(False, None), (True, (7, 5)), (True, (8, 0))])
def test_device_cell(generated, monkeypatch, capsys, cuda, capability):
    """Both branches, with a stand-in for torch (importing the real one costs seconds)."""
    import subprocess
    import sys
    import types
    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(is_available=lambda: cuda, get_device_capability=lambda: capability)
    calls = []
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    cell = nbformat.read(str(generated / SOURCES[0].name), as_version=4).cells[2]
    exec(compile(cell.source, "device", "exec"), {})
    out = capsys.readouterr().out
    assert calls == ([["nvidia-smi"]] if cuda else [])
    assert ("fall back to the CPU in fp32" in out) == (not cuda)
    assert ("no native bf16" in out) == (capability == (7, 5))
