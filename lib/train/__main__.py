"""Run one training stage outside a notebook, e.g. on several GPUs:

    python -m lib.train 04 params/toy.yaml [--run NAME]
    accelerate launch --config_file params/accelerate/ddp.yaml -m lib.train 05 params/a6000.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m lib.train 04 params/micro.yaml

It resolves the stage's parameters exactly as the pipeline does, calls the same ``run(cfg)`` the
notebook calls, and finishes the stage folder (metrics.json, DONE) so the pipeline then skips it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lib import paths
from lib.outputs import finish
from lib.params import ParamsError, load_profile, resolve, stage_params, validate_profile

STAGES = {"03": ("03_stage1_contrastive", "lib.train.contrastive"),
          "04": ("04_stage2_lm_head", "lib.train.head"),
          "05": ("05_stage3_pretrain", "lib.train.pretrain"),
          "06": ("06_instruction_tuning", "lib.train.sft")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=sorted(STAGES), help="training stage number")
    ap.add_argument("params", help="a params YAML, e.g. params/toy.yaml")
    ap.add_argument("--run", help="run name or absolute path; default: the profile name")
    args = ap.parse_args(argv)
    stage, module = STAGES[args.stage]
    try:
        prof = load_profile(args.params)
        validate_profile(prof, [stage])
        cfg = resolve(stage, stage_params(prof, stage, args.run or prof.name))
    except (ParamsError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    metrics = importlib.import_module(module).run(cfg)
    from accelerate import PartialState
    if PartialState().is_main_process:
        finish(cfg, metrics)
        print(f"{stage} finished: {paths.stage_dir(cfg['run'], stage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
