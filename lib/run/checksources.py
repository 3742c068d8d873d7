"""Where ``check`` looks for what a stage will load: a model spec (``toy``, a folder, a Hub id in
the local cache) and the folders of stages linked from another run (``pipeline.share``).

    model_problem("tyo", "toy")      # "'tyo' is not 'toy', not a folder (...), ...: did you mean 'toy'?"
    shared_stages(prof)              # {"00_toy_world": outputs/toy/00_toy_world, ...} when finished there
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from lib.core import paths
from lib.core.params import Profile

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def model_problem(value: str, run: str) -> str | None:
    """Why a model spec that is not ``toy`` names nothing, or None: a folder that does not exist,
    or a Hub id that cannot be had (a bare name not in the local cache; any id not in it while
    ``HF_HUB_OFFLINE`` is set). An ``owner/name`` id online is not reachable from here: accepted."""
    if value == "toy":
        return None
    path = paths.resolve_path(value, run)
    if path.exists() or "{run}" in value or "{toy}" in value:
        return None
    tried = f"{value!r} is not 'toy', not a folder ({path} does not exist)"
    if value.startswith((".", "/", "~")) or "{" in value or not HUB_ID.fullmatch(value):
        return f"{tried}, and not a Hub id (owner/name)"
    if isinstance(try_to_load_from_cache(value, "config.json"), str):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if "/" in value and not offline:
        return None
    near = difflib.get_close_matches(value, ["toy"], n=1, cutoff=0.5)
    return (f"{tried}, and not a Hub model in the local cache"
            + (" (HF_HUB_OFFLINE is set, so it cannot be downloaded)" if offline else
               " (Hub ids are owner/name, e.g. meta-llama/Llama-3.2-1B)")
            + (f": did you mean {near[0]!r}?" if near else ""))


def shared_stages(prof: Profile) -> dict[str, Path]:
    """The stages ``pipeline.share`` links from another run that has finished them: stage -> folder."""
    share = prof.sections.get("pipeline", {}).get("share")
    if not isinstance(share, dict) or not isinstance(share.get("stages"), list) or not share.get("run"):
        return {}
    wanted = {str(s).zfill(2)[:2] for s in share["stages"]}
    return {s: paths.stage_dir(str(share["run"]), s) for s in paths.stages()
            if s[:2] in wanted and (paths.stage_dir(str(share["run"]), s) / "DONE").exists()}


def relative_or_none(path: Path, folder: Path) -> Path | None:
    try:
        return path.relative_to(folder)
    except ValueError:
        return None


