"""A run's report: python -m lib.cli.report outputs/<run> (make report; see lib.run.report)."""
from __future__ import annotations

import argparse
import sys

from lib.cli.errors import failed
from lib.run.report import __doc__ as USAGE
from lib.run.report import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.report", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder (outputs/toy) or a run name (toy)")
    ap.add_argument("--link-images", action="store_true", help="HTML links the figures instead of inlining them")
    args = ap.parse_args(argv)
    try:
        md = write_report(args.run, inline_images=not args.link_images)
    except FileNotFoundError as e:
        return failed(e, "interrupted")
    print(f"{md}\n{md.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
