"""The steps of a grid's Slurm job scripts (lib.run.gridslurm): ``python -m lib.cli.grid link GRID COND``
links a condition's finished shared stages, ``python -m lib.cli.grid done GRID COND STAGE`` exits 0
when that stage is finished with the condition's parameters. Grids run with ``python -m lib.pipeline grid``."""
from __future__ import annotations

import sys

from lib.core import paths
from lib.core.hashing import config_hash
from lib.core.params import load_profile, stage_params
from lib.run.grid import link_shared, load_grid, plan, stage_finished


def main(argv: list[str] | None = None) -> int:
    """``link GRID COND`` (link the finished shared stages) and ``done GRID COND STAGE`` (exit 0
    when that stage is finished with this condition's parameters): the steps of lib.run.gridslurm's
    job scripts."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] not in ("link", "done"):
        print("usage: python -m lib.cli.grid link GRID COND | done GRID COND STAGE", file=sys.stderr)
        return 2
    grid = load_grid(args[1])
    plans = plan(grid, [args[2]])
    if args[0] == "link":
        print(f"{args[2]}: linked {', '.join(link_shared(grid, plans, args[2])) or 'nothing'}")
        return 0
    p = plans[args[2]]
    stage = next((s for s in p["ids"] if s[:2] == args[3][:2]), None)
    if stage is None:
        return 1
    prof = load_profile(p["file"])
    return 0 if stage_finished(paths.stage_dir(p["run"], stage), config_hash(stage_params(prof, stage, p["run"]))) else 1


if __name__ == "__main__":
    raise SystemExit(main())
