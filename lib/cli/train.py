"""Run one training stage outside a notebook, e.g. on several GPUs:

    python -m lib.train 04 params/toy.yaml [--run NAME]
    accelerate launch --config_file params/accelerate/ddp.yaml -m lib.train 05 params/a6000.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m lib.train 04 params/micro.yaml

It resolves the stage's parameters exactly as the pipeline does, calls the same ``run(cfg)`` the
notebook calls, and finishes the stage folder (metrics.json, DONE) so the pipeline then skips it.
Like the pipeline it checks the profile first and holds the run folder's lock while it trains.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

from lib.cli.errors import exit_quietly, failed
from lib.core import paths
from lib.core.params import ParamsError, load_profile, stage_params
from lib.core.runfolder import HELD_ENV, BadRunName, RunLocked, run_folder, run_lock
from lib.core.stage import finish, resolve
from lib.run.check import check_profile
from lib.run.failures import INTERRUPTED, cause, interruptible, reporting

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
    main_rank = os.environ.get("RANK", "0") == "0"    # takes the run folder's lock; the others run under it
    with interruptible():               # Ctrl-C / SIGTERM: one line, exit 130 / 143
        return train(args, stage, module, main_rank)


def train(args: argparse.Namespace, stage: str, module: str, main_rank: bool) -> int:
    rd = None
    try:
        prof = load_profile(args.params)
        run = str(args.run or prof.name)
        rd = run_folder(run)
        problems = check_profile(prof, [stage], run)
        if problems:
            raise ParamsError.of(problems)
        if not main_rank:               # the other ranks write under rank 0's lock
            os.environ[HELD_ENV] = str(rd.resolve())
        command = f"python -m lib.train {args.stage} {prof.path.name}"
        if prof.torch_threads():        # as the pipeline runs it (pipeline: {torch_threads: N})
            import torch  # lib.cli keeps torch off its own top imports
            torch.set_num_threads(prof.torch_threads())
        with run_lock(rd, command) if main_rank else nullcontext():
            cfg = resolve(stage, stage_params(prof, stage, run))
            metrics = importlib.import_module(module).run(cfg)
            from accelerate import PartialState  # lib.cli keeps accelerate off its own top imports
            state = PartialState()
            if state.is_main_process:
                finish(cfg, metrics)
                print(f"{stage} finished: {paths.stage_dir(cfg['run'], stage)}")
            state.wait_for_everyone()
            state.destroy_process_group()
    except (ParamsError, FileExistsError, RunLocked, BadRunName, KeyboardInterrupt) as e:
        return failed(e, f"{stage} {INTERRUPTED}")
    except Exception as e:              # not the input: the stage failed (out of memory, a full disk, a bug)
        return crashed(e, stage, rd)
    return 0


def crashed(e: Exception, stage: str, rd: Path | None) -> int:
    """One ``error:`` line with the cause as the pipeline words it (a full disk named whatever
    raised it), the traceback kept in the stage folder (``traceback.txt``; one file per rank; in
    the run folder when the stage folder was not made yet)."""
    where = ""
    if rd is not None and Path(rd).is_dir():
        rank = os.environ.get("RANK", "0")
        name = "traceback.txt" if rank == "0" else f"traceback-rank{rank}.txt"
        tb = Path(rd) / stage / name if (Path(rd) / stage).is_dir() else Path(rd) / f"{stage}.{name}"
        try:
            tb.write_text("".join(traceback.format_exception(e)), encoding="utf-8")
            where = f" (traceback in {tb})"
        except OSError:                 # a full disk may not take even this
            where = " (the traceback could not be written)"
    reporting()
    print(f"error: {stage} failed: {cause(e, rd)}{where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    exit_quietly(main())
