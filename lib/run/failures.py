"""Why a stage failed, in one line, and an executed notebook that stays valid JSON when it does.

    cause = failures.cause(exc, run_dir) # "the kernel died (out of memory? ...)", "the disk is full (...)"
    failures.atomic_notebooks(stage_dir) # Papermill then writes notebooks there via temp + rename
    with failures.output_into(log): ...  # the kernel's own output (its crash noise) goes to the log
    with failures.interruptible(): ...   # SIGINT / SIGTERM end the command as an interruption
    failures.exit_code(exc)              # 130 after SIGINT, 143 after SIGTERM, else 1

A failing stage can surface as a cell error (``PapermillExecutionError``: ename, evalue), as a
dead kernel (``DeadKernelError``, e.g. after the kernel was killed for memory), as an ``OSError``
of the runner itself (disk full while saving the notebook, a read-only folder), or as an
interruption. :func:`cause` walks the exception chain and names the root cause in words and what
to do, so the runner can print one ``error:`` line instead of chained tracebacks.

A full disk is named whatever library hit it: torch's writer says ``enforce fail at
inline_container.cc ... unexpected pos``, safetensors ``StorageFull``, Python ``[Errno 28]``. So
besides those words :func:`cause` looks at the free space of the run folder: under
:data:`LOW_DISK` any failure is reported as a full disk (the raw error kept in brackets).

An interrupted command exits 128 + the signal, as a shell reports a process killed by it: 130
after Ctrl-C (SIGINT), 143 after SIGTERM (Slurm's time limit, ``kill``, ``timeout``), so a
script can tell "interrupted: rerun to resume" from "failed" (1). After a signal, whatever else
the interruption raises (a kernel that died with it, papermill's cleanup) is the same interruption.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from lib.core.io import write_text

ERRNO_WORDS = {
    errno.EDQUOT: "the disk quota is exceeded{where}: free space, then rerun the same command to resume",
    errno.EROFS: "the file system is read-only{where}: run into a writable folder (--run or KOLLAMA_OUTPUTS)",
    errno.EACCES: "permission denied{where}: make the folder writable, or run into another one with --run",
    errno.EPERM: "operation not permitted{where}: make the folder writable, or run into another one with --run",
}
INTERRUPTED = "interrupted; nothing finished was lost: rerun the same command to resume"
KERNEL_DIED = ("the kernel died (out of memory? the system kills the largest process when RAM or GPU memory "
               "runs out): lower batch_size / max_len or free memory, then rerun the same command to resume")
LOW_DISK = 100 * 1024 ** 2      # free bytes under which a failure is blamed on the disk, whatever raised it
# how a write to a full disk reads when a library, not Python, reports it
WRITE_FAILED = re.compile(r"No space left|\[Errno 28\]|StorageFull|inline_container\.cc.*unexpected pos|"
                          r"PytorchStreamWriter failed|file write failed", re.S)
MESSAGE_CHARS = 300             # the longest raw message kept in the one line

_signals: list[int] = []        # SIGINT / SIGTERM received inside interruptible(), first first
_reporting = threading.Event()  # the error line is being written: later signals only noted


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread by :func:`interruptible`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (the main thread only);
    once :func:`reporting` is called they are only noted, so the error line and the exit finish.
    The previous handlers come back after the block, and what it noted is forgotten (report the
    error, and take :func:`exit_code`, inside it)."""
    _signals.clear()
    _reporting.clear()

    def handler(signum, frame):
        _signals.append(signum)
        if not _reporting.is_set():
            raise Interrupted(signum)
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _signals.clear()
        _reporting.clear()


def reporting() -> None:
    """The command is writing its error line: from now on a signal no longer raises."""
    _reporting.set()


def signalled() -> int | None:
    """The first SIGINT / SIGTERM received inside :func:`interruptible`, or None."""
    return _signals[0] if _signals else None


def interrupted(signum: int | None = None) -> str:
    """The words for an interruption, naming the signal when there was one."""
    return f"interrupted ({signal.Signals(signum).name}){INTERRUPTED[len('interrupted'):]}" if signum else INTERRUPTED


def exit_code(exc: BaseException) -> int:
    """128 + the signal after SIGINT (130) or SIGTERM (143); 130 for any other interruption in
    ``exc``'s chain (a KeyboardInterrupt, a cell that raised one); 1 for a failure."""
    if signalled():
        return 128 + signalled()
    for e in chain(exc):
        if isinstance(e, Interrupted):
            return 128 + e.signum
        if isinstance(e, (KeyboardInterrupt, InterruptedError)) or getattr(e, "ename", None) == "KeyboardInterrupt":
            return 130
    return 1


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk of ``folder`` (or of its nearest existing parent); None if unknown."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size(n: int) -> str:
    if n < 1024 ** 2:
        return f"{n:,} bytes"
    return f"{n / 1024 ** 2:,.1f} MiB" if n < 1024 ** 3 else f"{n / 1024 ** 3:,.1f} GiB"


def _errno_words(code: int | None, filename: str | None) -> str | None:
    words = ERRNO_WORDS.get(code)
    return words.format(where=f" (writing {filename})" if filename else "") if words else None


def shorten(text: str, limit: int = MESSAGE_CHARS) -> str:
    """The first non-empty line of ``text``, at most about ``limit`` characters. A long one is cut
    in the middle: its start says what failed and its last sentence, as a rule, what to do."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, len(line) - 2)
    tail = line[end + 2:] if end > 0 and len(line) - end - 2 <= limit * 2 // 3 else line[-(limit // 2):]
    return f"{line[:max(limit - len(tail), limit // 3)]} ... {tail}"


def disk_full(folder: str | Path | None, writing: str | None = None) -> str:
    """The words for a full disk, naming the folder, its free space now and the file being written
    ("was full" when there is room again: a partial file may have been removed since)."""
    folder = folder or (Path(writing).parent if writing else None)
    free = free_bytes(folder) if folder else None
    where = [f"{folder} has {_size(free)} free" + ("" if free < LOW_DISK else " now")] if free is not None else []
    where += [f"writing {writing}"] if writing else []
    return (f"the disk {'was' if free is not None and free >= LOW_DISK else 'is'} full"
            + (f" ({'; '.join(where)})" if where else "")
            + ": free space (or point KOLLAMA_OUTPUTS at a larger disk), then rerun the same command to resume")


def _low_disk(folder: str | Path | None) -> bool:
    free = free_bytes(folder) if folder else None
    return free is not None and free < LOW_DISK


def _leading(found: list[BaseException], kind: type) -> Iterator[BaseException]:
    """The exceptions at the start of ``found`` that are ``kind`` (one failure's own chain)."""
    for e in found:
        if not isinstance(e, kind):
            return
        yield e


def cause(exc: BaseException, folder: str | Path | None = None) -> str:
    """The root cause of a stage failure in words, with what to do; one line. ``folder`` is the
    run folder: when its disk has less than :data:`LOW_DISK` free, any failure is a full disk."""
    from nbclient.exceptions import DeadKernelError  # optional on GPU nodes; python -m lib.train imports this
    from papermill.exceptions import PapermillExecutionError  # optional on GPU nodes; python -m lib.train imports this
    if signalled():                               # whatever else the interruption raised
        return interrupted(signalled())
    found = list(chain(exc))
    for i, e in enumerate(found):                 # the runner's own OSErrors: the disk, the folder
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            # saving the notebook failed: the cell's own error, kept by AtomicNotebookWriter
            cell = next((c.cell_error for c in _leading(found[i:], OSError)
                         if getattr(c, "cell_error", None)), None)
            words = disk_full(folder, e.filename)
            return f"in cell {cell[0]}: {words} ({cell[1]}: {shorten(cell[2])})" if cell else words
        if isinstance(e, OSError) and _errno_words(e.errno, e.filename):
            return _errno_words(e.errno, e.filename)
    low = _low_disk(folder)
    for e in found:
        if isinstance(e, (KeyboardInterrupt, InterruptedError)):
            return INTERRUPTED
        if isinstance(e, DeadKernelError):
            return f"{disk_full(folder)} (the kernel died)" if low else KERNEL_DIED
        if isinstance(e, PapermillExecutionError):
            cell, raw = f"in cell {e.exec_count or e.cell_index}", f"{e.ename}: {shorten(e.evalue)}"
            if e.ename == "KeyboardInterrupt":
                return f"{cell}: {INTERRUPTED}"
            if low or WRITE_FAILED.search(str(e.evalue)):
                return f"{cell}: {disk_full(folder)} ({raw})"
            m = re.search(r"\[Errno (\d+)\]", str(e.evalue))
            words = _errno_words(int(m.group(1)), None) if m else None
            return f"{cell}: {words} ({raw})" if words else f"{cell}: {raw}"
    raw = f"{type(exc).__name__}: {shorten(str(exc)) or 'no message'}"
    return f"{disk_full(folder)} ({raw})" if low or WRITE_FAILED.search(str(exc)) else raw


class AtomicNotebookWriter:
    """A Papermill I/O handler: reads as the local one does; writes to a temp file and renames,
    so the kept notebook is the last complete save, never a truncated one (disk full)."""

    @staticmethod
    def read(path: str) -> str:
        from papermill.iorw import LocalHandler  # optional on GPU nodes; python -m lib.train imports this
        return LocalHandler().read(path)

    @staticmethod
    def listdir(path: str) -> list[str]:
        return os.listdir(path)

    @staticmethod
    def pretty_path(path: str) -> str:
        return path

    @staticmethod
    def write(buf: str, path: str) -> None:
        try:
            write_text(path, buf)
        except OSError as e:        # the disk a cell filled: the cell's own error is only in ``buf``
            e.cell_error = failed_cell(buf)
            raise


def failed_cell(notebook: str) -> tuple[int, str, str] | None:
    """``(execution count, ename, evalue)`` of the last cell of a notebook (JSON text) that raised."""
    try:
        cells = json.loads(notebook).get("cells", [])
    except (ValueError, AttributeError):
        return None
    errors = [(c.get("execution_count") or i, o.get("ename", ""), o.get("evalue", ""))
              for i, c in enumerate(cells) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return errors[-1] if errors else None


def atomic_notebooks(folder: str | Path) -> None:
    """Make Papermill write every notebook under ``folder`` atomically (idempotent)."""
    from papermill.iorw import papermill_io  # optional on GPU nodes; python -m lib.train imports this
    scheme = str(Path(folder)) + os.sep
    if not any(s == scheme for s, _ in papermill_io._handlers):
        papermill_io.register(scheme, AtomicNotebookWriter)


@contextmanager
def output_into(log: IO[str]) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` for the block. A kernel started inside inherits
    them, so what the kernel itself prints outside its cells (tracebacks of its shutdown, while it
    dies with the runner or after it) lands in the stage's log, never on the terminal around or
    after the one ``error:`` line."""
    sys.stdout.flush()
    sys.stderr.flush()
    log.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(log.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
