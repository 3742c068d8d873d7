"""Result tables from a finished run, for the README and docs/ (see lib.run.results).

    python -m lib.cli.results outputs/toy                                   # the transfer table
    python -m lib.cli.results outputs/toy --table extra                     # another table
    python -m lib.cli.results outputs/toy --table excerpt --into README.md  # fill its markers
    python -m lib.cli.results outputs/toy --into README.md                  # fill every results:NAME block

Tables: transfer, excerpt, extra, scores, dpo. In a markdown file a table sits between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; ``--marker`` picks another NAME.
"""
from __future__ import annotations

import argparse
import sys

from lib.cli.errors import failed
from lib.run.results import TABLES, ResultsError, marker_names, render, write_into


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.results", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a finished run folder (outputs/toy) or a run name (toy)")
    ap.add_argument("--table", choices=list(TABLES), help="which table (default: transfer; with --into "
                    "and no --table, every results:NAME block of the file whose NAME is a table)")
    ap.add_argument("--into", metavar="FILE", help="a markdown file whose results block(s) to rewrite")
    ap.add_argument("--marker", metavar="NAME", help="the block to rewrite (default: the table's name)")
    args = ap.parse_args(argv)
    if args.marker and not (args.into and args.table):
        ap.error("--marker needs --into and --table")
    try:
        if not args.into:
            sys.stdout.write(render(args.run, args.table or "transfer"))
            return 0
        if args.table:
            blocks = [(args.marker or args.table, args.table)]
        else:
            with open(args.into, encoding="utf-8") as f:
                blocks = [(n, n) for n in marker_names(f.read()) if n in TABLES]
            if not blocks:
                raise ResultsError(f"{args.into}: no <!-- results:NAME --> block names a table "
                                   f"({', '.join(TABLES)})")
        path = write_into(args.into, args.run, blocks)
    except (ResultsError, FileNotFoundError) as e:
        return failed(e, "interrupted")
    print(f"{path}: {', '.join(m for m, _ in blocks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
