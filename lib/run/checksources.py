"""Where ``check`` looks for what a stage will load: a model spec (``toy``, a folder, a Hub id in
the local cache), a ``hub:`` dataset split (a local folder, or a Hub dataset in the local cache)
and the folders of stages linked from another run (``pipeline.share``).

    model_problem("tyo", "toy")      # "'tyo' is not 'toy', not a folder (...), ...: did you mean 'toy'?"
    dataset_problem("hub:allenai/c4/en/train", "toy")   # offline and not cached: why, what to do
    shared_stages(prof)              # {"00_toy_world": outputs/toy/00_toy_world, ...} when finished there

Nothing here touches the network: ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) set means what
is not cached cannot be had, so it is reported before any work, not after a stage's minute of
retries; online, a Hub id that is not cached is left to the stage to download.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from lib.core import paths
from lib.core.params import Profile
from lib.core.sources import parse_hub

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
    if "/" in value and not offline():
        return None
    near = difflib.get_close_matches(value, ["toy"], n=1, cutoff=0.5)
    return (f"{tried}, and not a Hub model in the local cache"
            + (f" ({offline()} is set, so it cannot be downloaded)" if offline() else
               " (Hub ids are owner/name, e.g. meta-llama/Llama-3.2-1B)")
            + (f": did you mean {near[0]!r}?" if near else ""))


def offline() -> str | None:
    """The variable that puts the Hub off limits (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``),
    read when asked, or None."""
    return next((v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                 if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")), None)


def dataset_caches() -> tuple[Path, Path]:
    """Where ``datasets.load_dataset`` finds a Hub dataset offline: its own Arrow cache and the Hub's."""
    home = Path(os.environ.get("HF_HOME") or constants.HF_HOME).expanduser()
    return (Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser(),
            Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser())


def dataset_cached(dataset: str) -> bool:
    """Has ``datasets`` got this Hub dataset locally: prepared in its cache (``owner___name/config/
    version/hash``, as its ``CachedDatasetModuleFactory`` looks) or downloaded into the Hub cache?"""
    from datasets.naming import camelcase_to_snakecase    # only when a hub: spec is checked (~1 s)
    ds_cache, hub_cache = dataset_caches()
    *owner, name = dataset.split("/")
    prepared = ds_cache / "___".join([*owner, camelcase_to_snakecase(name)])
    snapshots = hub_cache / f"datasets--{dataset.replace('/', '--')}" / "snapshots"
    return (any(p.is_dir() for p in prepared.glob("*/*/*"))
            or (snapshots.is_dir() and any(snapshots.iterdir())))


def dataset_problem(value: str, run: str) -> str | None:
    """Why a ``hub:<dataset>/<config>/<split>`` spec names nothing the stage can load, or None:
    a local dataset folder that does not exist, or a Hub dataset in neither local cache while
    offline. Online, a Hub id that is not cached is left to the stage (it downloads it); a
    malformed spec is the caller's to report (:func:`lib.core.sources.parse_hub`)."""
    try:
        dataset, config, split, _ = parse_hub(value, with_field=True)
    except ValueError:
        return None
    folder = paths.resolve_path(dataset, run)
    if folder.is_dir():
        return None
    if not HUB_ID.fullmatch(dataset) or dataset.startswith((".", "~")):
        return (f"{value!r}: {folder} does not exist (a hub: spec that is a path reads a local dataset "
                f"folder): give an existing folder, or a local file")
    if not offline() or dataset_cached(dataset):
        return None
    return (f"{value!r}: the dataset {dataset} is not in the local Hugging Face cache "
            f"({' or '.join(str(c) for c in dataset_caches())}) and {offline()} is set, so the stage "
            f"could not download it: load it once online (datasets.load_dataset({dataset!r}, {config!r}, "
            f"split={split!r})) or give a local file")


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


