"""A run folder: where ``--run NAME`` may point, and one writer at a time.

    rd = run_folder("try2")                 # outputs/try2; "../x" or "" is refused
    with run_lock(rd, "python -m lib.pipeline run params/toy.yaml"):
        ...                                 # a second process on the same folder is refused at once

The lock is ``fcntl.flock`` on ``<run>/.lock``: the kernel releases it when the holder exits,
however it exits (even ``kill -9``), so a crashed run never leaves a stale lock behind. The file
keeps the holder's PID and command so that the refusal can name them. A notebook run by hand
checks it too (:func:`refuse_if_locked`, from ``lib.core.stage.resolve``).
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lib.core import paths

LOCK_NAME = ".lock"
HELD_ENV = "KOLLAMA_RUN_LOCK"    # set while a lock is held: the run folder its holder writes


class RunLocked(RuntimeError):
    """Another process writes into this run folder."""


class BadRunName(ValueError):
    """``--run`` would leave ``outputs/`` or point at the repository itself."""


def run_folder(run: str | Path) -> Path:
    """The folder of a run, refusing names that escape ``outputs/``. An absolute path is taken as
    given, except the repository or one of its folders outside ``outputs/``."""
    text = str(run)
    if not text.strip():
        raise BadRunName("--run is empty: give a run name such as try2 (a folder under outputs/)")
    outputs = paths.OUTPUTS.resolve()
    p = Path(text).expanduser()
    if not p.is_absolute():
        target = (outputs / p).resolve()
        if ".." in p.parts or target == outputs or outputs not in target.parents:
            raise BadRunName(f"--run {text}: a run name must stay inside {outputs} (no '..'); give a plain "
                             f"name such as try2, or an absolute path outside the repository")
        return paths.run_dir(text)
    target = p.resolve()
    root = paths.PROJ_ROOT.resolve()
    inside_outputs = outputs in target.parents
    if target == root or target in root.parents or (root in target.parents and not inside_outputs) \
            or target == outputs:
        raise BadRunName(f"--run {text}: this would write stage folders into {target}; give a name "
                         f"under {outputs} or a folder of its own")
    return p


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return text.splitlines()[0] if text else "another process"


@contextmanager
def run_lock(run_dir: str | Path, command: str = "") -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` for the block; raise :class:`RunLocked` at once if another
    process holds it, naming its PID."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is in use by {_holder(lock_file)}; wait for it to finish, "
                            f"or give this run another --run name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} ({command or 'python'}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        before = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(run_dir.resolve())    # inherited by the kernels it starts
        try:
            yield lock_file
        finally:
            if before is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = before
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def refuse_if_locked(run_dir: str | Path) -> None:
    """For a writer that does not take the lock itself (a notebook run by hand in JupyterLab):
    raise :class:`RunLocked` if another process holds the run folder's lock. The pipeline's own
    kernels (and ``python -m lib.train``) are recognised by :data:`HELD_ENV` and let through."""
    run_dir = Path(run_dir)
    lock_file = run_dir / LOCK_NAME
    if not lock_file.exists() or os.environ.get(HELD_ENV) == str(run_dir.resolve()):
        return
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is in use by {_holder(lock_file)}; wait for it to finish, "
                            f"or set this notebook's 'run' parameter to another run") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
