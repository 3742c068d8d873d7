"""Generate the Colab versions of the notebooks: ``notebooks/colab/NN_*.ipynb``.

    python -m lib.cli.colab            # (re)write notebooks/colab/ from notebooks/NN_*.ipynb
    python -m lib.cli.colab --check    # write nothing; exit 1 listing stale, missing or orphan files

Never edit ``notebooks/colab/`` by hand: edit the source notebook and rerun this (a test fails
when the two disagree). Each Colab notebook is its source with three cells in front:

1. a markdown cell with the "Open in Colab" badge (the URL is built from :data:`REPO`);
2. an install cell that only runs on Colab (``"google.colab" in sys.modules``): it clones the
   repository, installs it editable and changes into it. **torch is not reinstalled**: the project
   pins ``torch==2.13.0`` for local CPU installs, but Colab ships its own CUDA build, and pip would
   replace it with a multi-GB download. So the package is installed with ``--no-deps`` and then
   every dependency from ``pyproject.toml`` except :data:`COLAB_PROVIDES` (baked in at generation
   time, so a change to ``pyproject.toml`` makes these files stale and the test says so);
3. a device check: ``nvidia-smi`` when CUDA is there, else a note that ``device="auto"`` falls
   back to the CPU in fp32.

The source cells follow unchanged, except that the ``parameters`` cell (keeping its tag) starts
with a comment on how its defaults relate to ``params/toy.yaml``. Outputs and execution metadata
are stripped; new cells get fixed ids, so the same input always gives byte-identical files.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import nbformat

from lib.core import paths
from lib.core.io import write_text
from lib.core.params import load_profile, notebook_params

REPO = "kollama/kollama"     # GitHub <org>/<repo> the badge and the clone use: the one place to change
BRANCH = "main"              # branch the badge opens and the install cell clones
CLONE_DIR = "/content/kollama"
# Dependencies Colab already provides in a build of its own; installing ours would replace them.
COLAB_PROVIDES = {
    "torch": "Colab's CUDA build; the local pin (CPU wheels) would be a multi-GB reinstall",
    "ipykernel": "Colab's notebook runtime pins its own; upgrading it can break the session",
    "jupyterlab": "not used on Colab",
}
NOTE_PREFIX = "# Colab:"     # first line of the parameters cell in the Colab versions
TOY_PROFILE = "toy.yaml"


# --- the new cells -------------------------------------------------------------------------------

def badge_url(name: str) -> str:
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/colab/{name}.ipynb"


def badge_cell(stage: str, earlier: list[str]) -> nbformat.NotebookNode:
    src = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge_url(stage)})\n\n"
           f"*Generated from [`notebooks/{stage}.ipynb`](https://github.com/{REPO}/blob/{BRANCH}/notebooks/"
           f"{stage}.ipynb) by `python -m lib.cli.colab`; edit that notebook, not this copy.*")
    if earlier:
        only = ",".join(s[:2] for s in earlier)
        src += (f"\n\nThis stage reads the outputs of stages {earlier[0][:2]}–{earlier[-1][:2]} of its run "
                f"(`outputs/<run>/`). Each Colab notebook gets a fresh machine, so after the install cell "
                f"create them here with `!python -m lib.pipeline run params/toy.yaml --only {only}`.")
    return nbformat.v4.new_markdown_cell(src, id="colab-badge")


def colab_dependencies(pyproject: Path = paths.PROJ_ROOT / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of pyproject.toml without those Colab provides itself."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    return [d for d in deps if re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() not in COLAB_PROVIDES]


def install_cell(deps: list[str]) -> nbformat.NotebookNode:
    dep_lines = "".join(f"        {json.dumps(d)},\n" for d in deps)
    src = f'''# Colab only (elsewhere `make run` or `pip install -e .` has installed the project already).
import os, subprocess, sys
if "google.colab" in sys.modules:
    if not os.path.isdir("{CLONE_DIR}"):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{BRANCH}",
                        "https://github.com/{REPO}.git", "{CLONE_DIR}"], check=True)
    os.chdir("{CLONE_DIR}")  # the repo root: `import lib` works now, before any runtime restart
    # Keep Colab's own torch (CUDA build): the package goes in without dependencies, then every
    # dependency of pyproject.toml except {", ".join(sorted(COLAB_PROVIDES))} (see lib/run/colab.py).
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", "."], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
{dep_lines}    ], check=True)'''
    return nbformat.v4.new_code_cell(src, id="colab-install")


def device_cell() -> nbformat.NotebookNode:
    src = '''# Which device and precision `device="auto"`, `precision="auto"` will use: on an A100/L4 (Ampere or
# newer) bf16 autocast over fp32 weights; on a T4 (no native bf16) fp16 autocast with a gradient
# scaler, and fp16 weights to evaluate; without a GPU, the CPU in fp32.
import subprocess
import torch
if torch.cuda.is_available():
    subprocess.run(["nvidia-smi"], check=False)
    if torch.cuda.get_device_capability()[0] < 8:
        print("This GPU has no native bf16 (e.g. a T4): precision 'auto' trains with fp16 autocast and a "
              "gradient scaler (fp16-mixed) and evaluates in fp16.")
    else:
        print("precision 'auto': bf16 autocast over fp32 weights (bf16-mixed).")
else:
    print("No GPU: stages fall back to the CPU in fp32. The toy defaults run on a CPU in minutes; "
          "for real models pick Runtime > Change runtime type > GPU.")'''
    return nbformat.v4.new_code_cell(src, id="colab-device")


def parameters_note(stage: str, schema: dict) -> str:
    """One comment line: the defaults below are the toy world; what params/toy.yaml changes."""
    toy = paths.PARAMS / TOY_PROFILE
    if not toy.exists():
        return f"{NOTE_PREFIX} the defaults are the toy world (fits a free runtime)."
    prof = load_profile(toy)
    diff = {k: v for k, v in {**prof.common(), **prof.sections.get(stage, {})}.items()
            if k in schema and k != "run" and v != schema[k].default}
    tail = ("params/toy.yaml also sets " + ", ".join(f"{k} = {v!r}" for k, v in diff.items())
            if diff else "params/toy.yaml keeps them")
    return f"{NOTE_PREFIX} the defaults are the toy world (fits a free runtime); {tail}."


# --- one notebook --------------------------------------------------------------------------------

def _stable_id(index: int, cell: nbformat.NotebookNode) -> str:
    digest = hashlib.sha1(f"{index}\0{cell.cell_type}\0{cell.source}".encode()).hexdigest()
    return digest[:8]


def _strip(cell: nbformat.NotebookNode, index: int) -> nbformat.NotebookNode:
    """The cell without outputs and run-time metadata; tags and other metadata are kept."""
    cell = copy.deepcopy(cell)
    cell.setdefault("id", _stable_id(index, cell))
    meta = {k: v for k, v in cell.get("metadata", {}).items()
            if k not in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime")}
    cell["metadata"] = meta
    if cell.cell_type == "code":
        cell["outputs"], cell["execution_count"] = [], None
    if not cell.get("attachments"):
        cell.pop("attachments", None)
    return cell


def colab_notebook(src: Path, earlier: list[str] | None = None,
                   deps: list[str] | None = None) -> nbformat.NotebookNode:
    """The Colab version of one source notebook (``earlier``: the stages before it)."""
    stage = src.stem
    nb = nbformat.read(str(src), as_version=4)
    cells = [_strip(c, i) for i, c in enumerate(nb.cells)]
    schema = notebook_params(stage, src)
    for c in cells:
        if "parameters" in c.metadata.get("tags", []):
            c.source = parameters_note(stage, schema) + "\n" + c.source
    deps = colab_dependencies() if deps is None else deps
    out = nbformat.v4.new_notebook()
    out.nbformat, out.nbformat_minor = 4, 5
    out.cells = [badge_cell(stage, earlier or []), install_cell(deps), device_cell(), *cells]
    out.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    out.metadata["colab"] = {"name": f"{stage}.ipynb", "provenance": []}
    ids = [c.id for c in out.cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{src}: duplicate cell ids after conversion: {ids}")
    nbformat.validate(out)
    return out


def render(src: Path, earlier: list[str] | None = None, deps: list[str] | None = None) -> str:
    """The exact file text of the Colab version of ``src``."""
    text = nbformat.writes(colab_notebook(src, earlier, deps))
    return text if text.endswith("\n") else text + "\n"


# --- all notebooks -------------------------------------------------------------------------------

def sources(src_dir: Path = paths.NOTEBOOKS) -> list[Path]:
    return sorted(Path(src_dir).glob("[0-9][0-9]_*.ipynb"))


def expected(src_dir: Path = paths.NOTEBOOKS) -> dict[str, str]:
    """File name -> text of every Colab notebook that ``src_dir`` should produce."""
    srcs, deps = sources(src_dir), colab_dependencies()
    return {s.name: render(s, [p.stem for p in srcs[:i]], deps) for i, s in enumerate(srcs)}


def stale(src_dir: Path = paths.NOTEBOOKS, out_dir: Path = paths.COLAB_NOTEBOOKS) -> list[str]:
    """Problems with ``out_dir``: missing or outdated files, and orphans whose source is gone."""
    want, out_dir = expected(src_dir), Path(out_dir)
    have = {p.name for p in out_dir.glob("[0-9][0-9]_*.ipynb")}
    problems = []
    for name, text in want.items():
        f = out_dir / name
        if not f.exists():
            problems.append(f"{f}: missing")
        elif f.read_bytes() != text.encode("utf-8"):
            problems.append(f"{f}: stale (differs from its source {Path(src_dir) / name})")
    problems += [f"{out_dir / n}: orphan (no notebooks/{n})" for n in sorted(have - set(want))]
    return problems


def generate(src_dir: Path = paths.NOTEBOOKS, out_dir: Path = paths.COLAB_NOTEBOOKS) -> list[Path]:
    """Write every Colab notebook (atomically; unchanged files are not touched), remove orphans.
    Returns the files written or removed."""
    want, out_dir = expected(src_dir), Path(out_dir)
    changed = []
    for name, text in want.items():
        f = out_dir / name
        if not f.exists() or f.read_bytes() != text.encode("utf-8"):
            write_text(f, text)
            changed.append(f)
    for f in sorted(out_dir.glob("[0-9][0-9]_*.ipynb")):
        if f.name not in want:
            f.unlink()
            changed.append(f)
    return changed
