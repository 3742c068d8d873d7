"""The rehearsal's stand-in models: python -m lib.cli.rehearsal (see lib.run.rehearsal)."""
from __future__ import annotations

import argparse
import sys

from lib.core import paths
from lib.run.rehearsal import __doc__ as USAGE
from lib.run.rehearsal import build_assets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.rehearsal", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", nargs="?", default=str(paths.OUTPUTS / "rehearsal" / "assets"),
                    help="folder for llama/ and neox/ (default: outputs/rehearsal/assets, where "
                         "params/rehearsal.yaml looks with the default run name)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild models that exist")
    args = ap.parse_args(argv)
    print(build_assets(args.dest, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
