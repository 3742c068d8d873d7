"""How a command line ends on bad input or an interruption: one ``error:`` line per problem on
stderr and the exit code, the same for every entry point: 1 for a failure; 130 after Ctrl-C
(SIGINT) and 143 after SIGTERM, as a shell reports a process those signals killed, so a script or
Slurm can tell "interrupted: rerun to resume" from "failed" (:func:`lib.run.failures.exit_code`).

    with failures.interruptible():            # SIGINT / SIGTERM raise KeyboardInterrupt, are remembered
        try: ...
        except (ParamsError, KeyboardInterrupt) as e:
            return failed(e, "interrupted; ...")
    exit_quietly(main())                      # in __main__: nothing reaches the terminal after the error line
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from lib.core.params import ParamsError
from lib.run.failures import exit_code, reporting


def failed(e: BaseException, interrupted: str, note_many: bool = False) -> int:
    """Print ``e`` as ``error:`` lines (every problem of a :class:`ParamsError`; with ``note_many``
    also how many, and that nothing ran) and return the exit code. A signal that comes while the
    line is written no longer interrupts it."""
    reporting()
    if isinstance(e, KeyboardInterrupt):
        print(f"error: {interrupted}", file=sys.stderr)
        return exit_code(e)
    if isinstance(e, ParamsError):
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        if note_many and len(e.problems) > 1:
            print(f"{len(e.problems)} problems; nothing was run", file=sys.stderr)
        return exit_code(e)
    print(f"error: {e}", file=sys.stderr)
    return exit_code(e)


def exit_quietly(code: int) -> NoReturn:
    """End the process with ``code``. After a failure its stdout and stderr point at /dev/null
    first: what Python, a progress bar or a dying child would print while the process winds down
    (an asyncio task's ``DeadKernelError``, "Exception ignored in ...") never comes after the
    ``error:`` line. Only for a process's own exit: tests call ``main()`` and keep their output."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    sys.exit(code)
