"""Which stages of a profile a command considers: ``--only``, ``--from`` and ``pipeline.skip``
applied to the notebooks in order (the runner, ``check``, ``plan`` and grids all ask this)."""
from __future__ import annotations

from lib.core import paths
from lib.core.params import ParamsError, Profile


def select_stages(prof: Profile, start: str | None = None, only: str | None = None) -> list[str]:
    """The stages to consider, in order. 00_toy_world runs only when ``base_model: toy``; stages
    in ``pipeline: {skip: [...]}`` never run. An empty ``only``/``start``, or one that selects
    nothing, is an error (never "run everything" or "run nothing" silently)."""
    stages = [s for s in paths.stages() if s[:2] not in prof.skipped()]
    if prof.common().get("base_model", "toy") != "toy":
        stages = [s for s in stages if s != paths.TOY_STAGE]
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        if not wanted:
            raise ParamsError(f"--only {only!r} names no stage; give stages such as --only 07,08 "
                              f"(stages: {', '.join(stages)})")
        unknown = [w for w in wanted if not any(s[:2] == w.zfill(2) or s == w for s in stages)]
        if unknown:
            raise ParamsError(f"--only {only}: no stage {', '.join(unknown)} (stages: {', '.join(stages)})")
        stages = [s for s in stages if any(s[:2] == w.zfill(2) or s == w for w in wanted)]
    if start is not None:
        first = start.strip().zfill(2)[:2]
        known = any(s[:2] == first or s == start.strip() for s in paths.stages())
        if not start.strip() or not first.isdigit() or not known:
            raise ParamsError(f"--from {start!r} is not a stage; give one such as --from 03 "
                              f"(stages: {', '.join(stages)})")
        stages = [s for s in stages if s[:2] >= first]
        if not stages:
            raise ParamsError(f"--from {start} selects no stage of this profile; nothing to run")
    return stages
