"""Why a stage failed, in one line, and an executed notebook that stays valid JSON when it does.

    cause = failures.cause(exc)          # "the kernel died (out of memory? ...)", "no space left ..."
    failures.atomic_notebooks(stage_dir) # Papermill then writes notebooks there via temp + rename
    with failures.stderr_into(log): ...  # the kernel's own stderr (its crash noise) goes to the log

A failing stage can surface as a cell error (``PapermillExecutionError``: ename, evalue), as a
dead kernel (``DeadKernelError``, e.g. after the kernel was killed for memory), as an ``OSError``
of the runner itself (disk full while saving the notebook, a read-only folder), or as an
interruption. :func:`cause` walks the exception chain and names the root cause in words and what
to do, so the runner can print one ``error:`` line instead of chained tracebacks.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from lib.core.io import write_text

ERRNO_WORDS = {
    errno.ENOSPC: "no space left on the disk{where}: free space (or point KOLLAMA_OUTPUTS at a larger "
                  "disk), then rerun the same command to resume",
    errno.EDQUOT: "the disk quota is exceeded{where}: free space, then rerun the same command to resume",
    errno.EROFS: "the file system is read-only{where}: run into a writable folder (--run or KOLLAMA_OUTPUTS)",
    errno.EACCES: "permission denied{where}: make the folder writable, or run into another one with --run",
    errno.EPERM: "operation not permitted{where}: make the folder writable, or run into another one with --run",
}
INTERRUPTED = "interrupted; nothing finished was lost: rerun the same command to resume"


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _errno_words(code: int | None, filename: str | None) -> str | None:
    words = ERRNO_WORDS.get(code)
    return words.format(where=f" (writing {filename})" if filename else "") if words else None


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit] + " ..."


def cause(exc: BaseException) -> str:
    """The root cause of a stage failure in words, with what to do; one line."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    found = list(chain(exc))
    for e in found:                               # the runner's own OSErrors: the disk, the folder
        if isinstance(e, OSError) and _errno_words(e.errno, e.filename):
            return _errno_words(e.errno, e.filename)
    for e in found:
        if isinstance(e, (KeyboardInterrupt, InterruptedError)):
            return INTERRUPTED
        if isinstance(e, DeadKernelError):
            return ("the kernel died (out of memory? the system kills the largest process when RAM or "
                    "GPU memory runs out): lower batch_size / max_len or free memory, then rerun the "
                    "same command to resume")
        if isinstance(e, PapermillExecutionError):
            cell = f"in cell {e.exec_count or e.cell_index}"
            if e.ename == "KeyboardInterrupt":
                return f"{cell}: {INTERRUPTED}"
            m = re.search(r"\[Errno (\d+)\]", str(e.evalue))
            words = _errno_words(int(m.group(1)), None) if m else None
            if words:
                return f"{cell}: {words} ({e.ename}: {_first_line(e.evalue)})"
            return f"{cell}: {e.ename}: {_first_line(e.evalue)}"
    return f"{type(exc).__name__}: {_first_line(str(exc)) or 'no message'}"


class AtomicNotebookWriter:
    """A Papermill I/O handler: reads as the local one does; writes to a temp file and renames,
    so the kept notebook is the last complete save, never a truncated one (disk full)."""

    @staticmethod
    def read(path: str) -> str:
        from papermill.iorw import LocalHandler
        return LocalHandler().read(path)

    @staticmethod
    def listdir(path: str) -> list[str]:
        return os.listdir(path)

    @staticmethod
    def pretty_path(path: str) -> str:
        return path

    @staticmethod
    def write(buf: str, path: str) -> None:
        write_text(path, buf)


def atomic_notebooks(folder: str | Path) -> None:
    """Make Papermill write every notebook under ``folder`` atomically (idempotent)."""
    from papermill.iorw import papermill_io
    scheme = str(Path(folder)) + os.sep
    if not any(s == scheme for s, _ in papermill_io._handlers):
        papermill_io.register(scheme, AtomicNotebookWriter)


@contextmanager
def stderr_into(log: IO[str]) -> Iterator[None]:
    """Point file descriptor 2 at ``log`` for the block. A kernel started inside inherits it, so
    what the kernel itself prints while dying (tracebacks of its shutdown) lands in the stage's
    log, not on the terminal above the one ``error:`` line."""
    sys.stderr.flush()
    log.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
