"""Which models 07 evaluates: the baselines, 02's controls, and every finished stage's final
model with its kept checkpoints (and 06's ``sft_model/`` when DPO ran after it), in pipeline order.

    from lib.eval.models import models_for, stage_models
    models = models_for(cfg)              # baselines first, then each stage: checkpoints by step, model/
    stage_models(run_dir, "04,06", include_checkpoints=False)

A final model byte-identical to its last checkpoint (the training loop copies it) is marked
``same_as`` that checkpoint, so :mod:`lib.eval.harness` reuses its results instead of scoring it again.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lib.core import paths
from lib.core.hashing import file_sha256
from lib.core.io import read_json

KINDS = ("baseline", "control", "stage", "checkpoint")
STAGE_RE = re.compile(r"\d\d_\w+")
STEP_RE = re.compile(r"step-(\d+)")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate. ``path``: a local folder (absolute) or a Hub id."""
    name: str
    kind: str                 # baseline | control | stage | checkpoint
    stage: str | None         # stage folder it comes from (None for baselines)
    step: int | None          # training step (the last checkpoint's for a stage's final model)
    path: str
    same_as: str | None = None  # an earlier model with byte-identical weights: its results are reused


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def baseline_name(spec: str, path: str) -> str:
    """``baseline-toy``, ``baseline-EleutherAI--polyglot-ko-1.3b`` (Hub), ``baseline-<folder>`` (local)."""
    if spec == "toy":
        return "baseline-toy"
    p = Path(path)
    if p.is_absolute() and p.exists():
        base = f"{p.parent.name}-{p.name}" if p.name == "model" else p.name
    else:
        base = spec.replace("/", "--")
    return f"baseline-{_safe(base)}"


def baseline_models(baselines: Sequence[str], source: Callable[[str], str]) -> list[ModelSpec]:
    """``source`` turns a spec into a loadable path or Hub id (``cfg.source`` in the notebook)."""
    out = []
    for spec in baselines:
        path = source(spec)
        out.append(ModelSpec(baseline_name(spec, path), "baseline", None, None, path))
    return out


def _is_model_dir(d: Path) -> bool:
    return (d / "config.json").is_file()


def parse_stages(stages: str | Sequence[str]) -> list[str] | None:
    """None for auto; else the listed names (a list, or a comma-separated string)."""
    items = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else [str(s) for s in stages]
    items = [s for s in items if s]
    return None if items in ([], ["auto"]) else items


def _match_stage(run_dir: Path, item: str) -> str:
    names = sorted(d.name for d in run_dir.iterdir() if d.is_dir() and STAGE_RE.fullmatch(d.name)) \
        if run_dir.is_dir() else []
    hits = [n for n in names if n == item] or [n for n in names if n[:2] == item.zfill(2)[:2] and item.isdigit()]
    if len(hits) != 1:
        raise FileNotFoundError(f"stages: {item!r} names no stage folder of {run_dir} "
                                f"(there: {', '.join(names) or 'none'}); use a folder name like "
                                "05_stage3_pretrain, its number, or 'auto'")
    return hits[0]


def weight_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def same_weights(a: Path, b: Path) -> bool:
    """True when two model folders hold byte-identical weight files (sizes checked first)."""
    wa, wb = weight_files(a), weight_files(b)
    if not wa or [f.name for f in wa] != [f.name for f in wb] or \
            any(x.stat().st_size != y.stat().st_size for x, y in zip(wa, wb)):
        return False
    return all(file_sha256(x) == file_sha256(y) for x, y in zip(wa, wb))


SFT_MODEL = "sft_model"      # 06's instruction-tuned model when DPO ran after it (model/ is DPO's)


def stage_models(run_dir: str | Path, stages: str | Sequence[str] = "auto", include_checkpoints: bool = True,
                 exclude: Sequence[str] = (paths.TOY_STAGE,)) -> list[ModelSpec]:
    """The models of a run's stages, in stage order; per stage its checkpoints (by step) then its
    final ``model/``. ``auto``: every finished stage (``DONE``) with a ``model/``, except ``exclude``
    (00_toy_world's model is the ``toy`` baseline). A final model byte-identical to its last
    checkpoint (the training loop copies it) reuses that checkpoint's results. A stage with an
    ``sft_model/`` (06 followed by DPO) also gives ``<stage>-sft``, before its final model, so
    the tables of final models show the stage with and without DPO."""
    run_dir = Path(run_dir)
    wanted = parse_stages(stages)
    if wanted is None:
        names = []
        for d in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
            if not (d.is_dir() and STAGE_RE.fullmatch(d.name)) or d.name in exclude:
                continue
            if _is_model_dir(d / "model"):
                if (d / "DONE").exists():
                    names.append(d.name)
                else:
                    warnings.warn(f"{d} has a model/ but is not finished (no DONE): not evaluated")
    else:
        names = [_match_stage(run_dir, s) for s in wanted]
        for n in names:
            d = run_dir / n
            if not (d / "DONE").exists():
                raise FileNotFoundError(f"stage {n} is listed in 'stages' but {d} is not finished "
                                        "(no DONE); run it first or leave it out")
            if not _is_model_dir(d / "model"):
                raise FileNotFoundError(f"stage {n} is listed in 'stages' but has no model/ "
                                        f"({d / 'model'}): it produces no model to evaluate")
    out: list[ModelSpec] = []
    for n in names:
        d = run_dir / n
        out += control_models(d)
        ckpts = sorted((int(m.group(1)), c) for c in (d / "checkpoints").glob("step-*")
                       if (m := STEP_RE.fullmatch(c.name)) and c.is_dir())
        if include_checkpoints:
            out += [ModelSpec(f"{n}-step-{s:06d}", "checkpoint", n, s, str(c / "model"))
                    for s, c in ckpts if _is_model_dir(c / "model")]
        last = ckpts[-1] if ckpts else None

        def same_as_last(model_dir: Path) -> str | None:
            if include_checkpoints and last and _is_model_dir(last[1] / "model") \
                    and same_weights(model_dir, last[1] / "model"):
                return f"{n}-step-{last[0]:06d}"
            return None
        if _is_model_dir(d / SFT_MODEL):     # 06 with DPO: the model before it, a row of its own
            out.append(ModelSpec(f"{n}-sft", "stage", n, last[0] if last else None, str(d / SFT_MODEL),
                                 same_as_last(d / SFT_MODEL)))
        out.append(ModelSpec(n, "stage", n, last[0] if last else None, str(d / "model"), same_as_last(d / "model")))
    return out


def control_models(stage_dir: Path) -> list[ModelSpec]:
    """The control models a stage saved (``controls/controls.json``, written by 02's oracle
    controls), named ``control-<name>``."""
    listing = stage_dir / "controls" / "controls.json"
    if not listing.is_file():
        return []
    rows = read_json(listing)
    return [ModelSpec(f"control-{r['name']}", "control", stage_dir.name, None,
                      str(stage_dir / "controls" / r["path"])) for r in rows]


def unique_names(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    seen: dict[str, int] = {}
    out = []
    for m in models:
        k = seen[m.name] = seen.get(m.name, 0) + 1
        out.append(m if k == 1 else ModelSpec(**{**asdict(m), "name": f"{m.name}-{k}"}))
    return out


def models_for(cfg: Any) -> list[ModelSpec]:
    """Baselines, then the run's stages (notebook parameters ``baselines``, ``stages``,
    ``include_checkpoints``)."""
    return unique_names(baseline_models(cfg.baselines, cfg.source)
                        + stage_models(cfg.run_dir, cfg.stages, cfg.include_checkpoints))
