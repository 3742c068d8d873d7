"""How a command line ends on bad input or an interruption: one ``error:`` line per problem on
stderr and the exit code (1; 130 when interrupted), the same for every entry point."""
from __future__ import annotations

import sys

from lib.core.params import ParamsError


def failed(e: BaseException, interrupted: str, note_many: bool = False) -> int:
    """Print ``e`` as ``error:`` lines (every problem of a :class:`ParamsError`; with ``note_many``
    also how many, and that nothing ran) and return the exit code."""
    if isinstance(e, KeyboardInterrupt):
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    if isinstance(e, ParamsError):
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        if note_many and len(e.problems) > 1:
            print(f"{len(e.problems)} problems; nothing was run", file=sys.stderr)
        return 1
    print(f"error: {e}", file=sys.stderr)
    return 1
