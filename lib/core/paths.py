"""Every path the project uses, from one place.

Stage folders follow one convention: ``outputs/<run>/<NN_stage>/``. A stage finds its inputs
in earlier stage folders through :func:`stage_dir`, never through hand-written paths.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = PROJ_ROOT / "notebooks"
COLAB_NOTEBOOKS = NOTEBOOKS / "colab"
PARAMS = PROJ_ROOT / "params"
OUTPUTS = Path(os.environ.get("KOLLAMA_OUTPUTS", PROJ_ROOT / "outputs"))
SHARED_DATA = PROJ_ROOT.parent / "shared" / "data"

TOY_STAGE = "00_toy_world"


def notebook_path(stage: str) -> Path:
    """The source notebook of a stage, e.g. ``notebooks/01_vocab_merge.ipynb``."""
    return NOTEBOOKS / f"{stage}.ipynb"


def stages() -> list[str]:
    """Stage names (notebook stems) in run order."""
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def run_dir(run: str) -> Path:
    """The folder of one pipeline run; ``run`` may also be an absolute path."""
    p = Path(run)
    return p if p.is_absolute() else OUTPUTS / run


def stage_dir(run: str | Path, stage: str) -> Path:
    return run_dir(str(run)) / stage


def expand(value: str, run: str | Path) -> str:
    """Expand the placeholders a params value may use.

    ``{run}``: this run's folder; ``{toy}``: its 00_toy_world folder; ``{shared}``: ../shared/data;
    ``{repo}``: the repository root.
    """
    rd = run_dir(str(run))
    return (value.replace("{run}", str(rd))
                 .replace("{toy}", str(rd / TOY_STAGE))
                 .replace("{shared}", str(SHARED_DATA))
                 .replace("{repo}", str(PROJ_ROOT)))


def resolve_path(value: str, run: str | Path) -> Path:
    """A path parameter as an absolute path: placeholders expanded, relative to the repo root.

    Relative paths are taken from the repository root, not the current directory, so the same
    params work from JupyterLab (cwd ``notebooks/``), Papermill and the tests.
    """
    p = Path(expand(value, run)).expanduser()
    return p if p.is_absolute() else (PROJ_ROOT / p).resolve()
