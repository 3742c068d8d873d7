"""Regenerate the Colab notebooks: python -m lib.cli.colab [--check] (make colab; see lib.run.colab)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.core import paths
from lib.run.colab import __doc__ as USAGE
from lib.run.colab import generate, sources, stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.colab", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is stale")
    ap.add_argument("--src", type=Path, default=paths.NOTEBOOKS, help="source notebooks folder")
    ap.add_argument("--out", type=Path, default=paths.COLAB_NOTEBOOKS, help="Colab notebooks folder")
    args = ap.parse_args(argv)
    if args.check:
        problems = stale(args.src, args.out)
        for p in problems:
            print(p)
        if problems:
            print("run `python -m lib.cli.colab` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    changed = generate(args.src, args.out)
    print(f"{len(sources(args.src))} Colab notebooks in {args.out}; {len(changed)} written or removed")
    for f in changed:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
