"""The runner's command line: python -m lib.pipeline run|check|plan|grid|contamination (see lib.run.pipeline)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lib.cli.errors import exit_quietly, failed
from lib.core import paths
from lib.core.params import ParamsError, load_profile
from lib.core.runfolder import BadRunName, RunLocked
from lib.eval import contamination
from lib.run import failures, gridslurm
from lib.run.check import check_profile
from lib.run.grid import run_grid
from lib.run.pipeline import StageFailed, run_pipeline
from lib.run.pipeline import __doc__ as USAGE
from lib.run.plan import print_plan
from lib.run.stages import select_stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.pipeline", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the notebooks of a profile in order")
    r.add_argument("params", help="a params YAML, e.g. params/toy.yaml")
    r.add_argument("--run", help="run name (folder under outputs/) or absolute path; default: the profile name")
    r.add_argument("--from", dest="start", help="first stage to run, e.g. 03")
    r.add_argument("--only", help="comma-separated stages, e.g. 07,08")
    r.add_argument("--force", action="store_true", help="redo finished stages")
    r.add_argument("--gpu-memory", type=float, help="GiB of GPU memory to check each stage against "
                   "(default: the CUDA device's; no check on a CPU)")
    c = sub.add_parser("check", help="validate a profile against the notebooks; run nothing")
    c.add_argument("params")
    pl = sub.add_parser("plan", help="estimated peak GPU memory, disk, tokens and time per stage")
    pl.add_argument("params")
    pl.add_argument("--gpu-memory", type=float, default=48.0, help="GiB of the device (default 48: A6000)")
    pl.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation (default 0.35)")
    pl.add_argument("--tflops", type=float, default=154.8, help="device bf16 peak TFLOP/s (default: A6000)")
    ct = sub.add_parser("contamination", help="look for the 07 tasks' questions and passages in the "
                        "profile's training files (lib.eval.contamination); exit 1 when an item is dirty")
    ct.add_argument("params")
    ct.add_argument("--run", help="run whose built files (the toy world's) to read; default: the profile name")
    ct.add_argument("--ngram", type=int, default=8, help="words per n-gram (default 8)")
    g = sub.add_parser("grid", help="run a grid of conditions sharing identical stages (lib.run.grid)")
    g.add_argument("grid", help="a grid YAML, e.g. params/grids/toy_transfer.yaml")
    g.add_argument("--only", help="comma-separated condition names (with seeds: every seed of each), or replicates "
                   "such as recipe-s2")
    g.add_argument("--slurm", action="store_true", help="check the grid, write sbatch scripts (lib.run.gridslurm) for "
                   "it (or the --only conditions) and print the submit command; runs and submits nothing")
    args = ap.parse_args(argv)
    with failures.interruptible():      # Ctrl-C and a polite kill end in one line, exit 130 / 143
        try:
            return command(args)
        except (ParamsError, StageFailed, FileNotFoundError, FileExistsError, RunLocked, BadRunName,
                KeyboardInterrupt) as e:
            return failed(e, failures.interrupted(failures.signalled()), note_many=True)
        except OSError as e:            # the runner's own writes: disk full, read-only folder
            failures.reporting()
            print(f"error: {failures.cause(e)} ({type(e).__name__}: {e})", file=sys.stderr)
            return failures.exit_code(e)
        except Exception as e:          # raised by an interruption's aftermath (a kernel killed with it)
            if not failures.signalled():
                raise
            return failed(KeyboardInterrupt(), failures.interrupted(failures.signalled()))


def command(args: argparse.Namespace) -> int:
    """Run one parsed command line; its errors are raised, :func:`main` reports them."""
    if args.cmd == "plan":
        print_plan(args.params, args.gpu_memory, args.tflops, args.mfu)
        return 0
    if args.cmd == "contamination":
        if args.ngram < 2:
            raise ParamsError(f"--ngram must be 2 or more words, got {args.ngram}")
        found = contamination.scan_profile(load_profile(args.params), args.run, args.ngram)
        print(contamination.render(found), end="")
        missed = contamination.not_scanned(found) + list(found.get("pairs_not_read", []))
        if missed or not any(i["texts"] for i in found["inputs"]):
            raise ParamsError(f"the scan is incomplete ({len(missed)} input(s) not scanned, "
                              f"{sum(i['texts'] for i in found['inputs'])} texts read): not a clean "
                              "result; give local copies of what was not scanned")
        return 1 if contamination.n_dirty(found) else 0
    if args.cmd == "grid" and args.slurm:
        files = gridslurm.render(args.grid, args.only)
        print(f"wrote {files['shared']}\nwrote {files['array']}\nsubmit with:\n  {files['submit']}")
        return 0
    if args.cmd == "grid":
        out = run_grid(args.grid, args.only)
        print(f"grid: {len(out['table'])} rows -> {paths.run_dir(Path(args.grid).stem)}/grid.md")
        return 0
    if args.cmd == "check":
        t0 = time.time()
        prof = load_profile(args.params)
        problems = check_profile(prof, select_stages(prof))
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        if problems:
            print(f"{prof.path}: {len(problems)} problem(s) ({time.time() - t0:.1f}s)", file=sys.stderr)
            return 1
        print(f"{prof.path}: ok ({', '.join(select_stages(prof))}; {time.time() - t0:.1f}s)")
        return 0
    run_pipeline(args.params, args.run, args.start, args.only, args.force, gpu_memory=args.gpu_memory)
    return 0


if __name__ == "__main__":
    exit_quietly(main())
