"""Fault injection for a failed stage (issue 27, item 5): a full disk is named whatever library hit
it, a long message keeps its remedy, an interruption exits 130 (SIGINT) or 143 (SIGTERM), and
nothing is printed after the ``error:`` line.

As in test_faults.py the stage is a stand-in notebook (a kernel starts in a second or two) whose
``code`` parameter is the fault; the signals are sent to a real ``python -m lib.pipeline`` process.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from test_faults import one_line, one_line_error, write

from lib.cli.pipeline import main
from lib.core import paths
from lib.run import failures

STANDIN = '''\
import os
from pathlib import Path
sd = Path(run) / "01_standin"
sd.mkdir(parents=True, exist_ok=True)
(sd / "kernel.pid").write_text(str(os.getpid()))
print("started", flush=True)
exec(code)
'''
# a process that runs python -m lib.pipeline on the stand-in's notebooks folder, and that would
# print after its end (as asyncio's "Task exception was never retrieved" did) if it were let
RUNNER = '''\
import atexit, runpy, sys
from pathlib import Path
from lib.core import paths
paths.NOTEBOOKS = Path(sys.argv.pop(1))
atexit.register(lambda: print("Traceback (most recent call last): DeadKernelError, late", file=sys.stderr))
sys.argv[0] = "lib.pipeline"
runpy.run_module("lib.pipeline", run_name="__main__", alter_sys=True)
'''


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A notebooks folder holding one stand-in stage, 01_standin, that runs its ``code`` parameter;
    returns a function writing the profile for a piece of code."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    params = nbformat.v4.new_code_cell('run = "x"  # run folder\nseed = 0  # seed\ncode = ""  # the fault')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(STANDIN)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbdir / "01_standin.ipynb"))
    monkeypatch.setattr(paths, "NOTEBOOKS", nbdir)

    def profile(code: str) -> Path:
        body = "".join(f"    {line}\n" for line in code.splitlines())
        return write(tmp_path / "p.yaml", f"01_standin:\n  code: |\n{body}")
    return profile


REMEDY = "free space (or point KOLLAMA_OUTPUTS at a larger disk), then rerun the same command to resume"
TORCH_FULL = "[enforce fail at inline_container.cc:603] . unexpected pos 9408 vs 9296"


@pytest.mark.parametrize("code, free, said", [
    # torch.save on a full disk: nothing says "disk"; the run folder's free space does
    (f"raise RuntimeError({TORCH_FULL!r})", 4096,
     f"the disk is full ({{run}} has 4,096 bytes free): {REMEDY} (RuntimeError: {TORCH_FULL})"),
    # the writer's other message, after space was freed again: "was full", the free space now
    ("raise RuntimeError('PytorchStreamWriter failed writing file data/3: file write failed')", 50 * 2 ** 30,
     f"the disk was full ({{run}} has 50.0 GiB free now): {REMEDY} (RuntimeError: PytorchStreamWriter "
     "failed writing file data/3: file write failed)"),
    # any error when the disk is (nearly) full: the disk is named, the error kept
    ("raise ValueError('cannot reshape array of size 0')", 12 * 2 ** 20,
     f"the disk is full ({{run}} has 12.0 MiB free): {REMEDY} (ValueError: cannot reshape array of size 0)"),
])
def test_a_full_disk_is_named_whatever_library_raised_it(standin, tmp_path, capsys, monkeypatch, code, free, said):
    monkeypatch.setattr(failures, "free_bytes", lambda folder: free)
    run = tmp_path / "run"
    t0 = time.time()
    assert main(["run", str(standin(code)), "--run", str(run)]) == 1
    sd = run / "01_standin"
    assert one_line_error(capsys) == (f"error: 01_standin failed in cell 3: {said.format(run=run)} "
                                      f"(notebook {sd / '01_standin.ipynb'}, log {sd / 'log.txt'})")
    assert time.time() - t0 < 30


def test_a_full_disk_that_also_stops_the_notebook_save_keeps_the_cells_error(standin, tmp_path, capsys,
                                                                          monkeypatch):
    """What a real full disk does (reproduced on a 2 MiB tmpfs): torch.save fails in the cell,
    then saving the executed notebook fails too, so papermill never raises the cell's error; the
    line still names the cell and torch's words, kept from the notebook the save was writing."""
    monkeypatch.setattr(failures, "free_bytes", lambda folder: 0)
    real_write_text = Path.write_text

    def full(self, data, *a, **k):
        if self.name.startswith(".01_standin.ipynb.tmp") and '"ename": "RuntimeError"' in data:   # after the cell
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, data, *a, **k)
    monkeypatch.setattr(Path, "write_text", full)
    run = tmp_path / "run"
    assert main(["run", str(standin(f"raise RuntimeError({TORCH_FULL!r})")), "--run", str(run)]) == 1
    sd = run / "01_standin"
    assert one_line_error(capsys) == (f"error: 01_standin failed in cell 3: the disk is full ({run} has 0 bytes "
                                      f"free): {REMEDY} (RuntimeError: {TORCH_FULL}) (notebook "
                                      f"{sd / '01_standin.ipynb'}, log {sd / 'log.txt'})")


def test_the_runners_own_full_disk_names_the_folder_and_its_free_space(capsys, monkeypatch, tmp_path):
    from nbclient.exceptions import DeadKernelError
    monkeypatch.setattr(failures, "free_bytes", lambda folder: 0)
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "report.md"))
    assert failures.cause(e, tmp_path / "run") == (f"the disk is full ({tmp_path / 'run'} has 0 bytes free; "
                                                   f"writing {tmp_path / 'run' / 'report.md'}): {REMEDY}")
    assert failures.cause(DeadKernelError("Kernel died"), tmp_path) == (
        f"the disk is full ({tmp_path} has 0 bytes free): {REMEDY} (the kernel died)")
    assert failures.cause(ValueError("x")) == "ValueError: x"      # no folder: no disk to blame


def test_a_long_message_keeps_its_remedy(standin, tmp_path, capsys):
    """A corrupt checkpoint's message (lib.train.loop.resume) names each checkpoint and why, then
    what to do; cut to one line it loses the middle, never the remedy."""
    ckpts = tmp_path / "run" / "05_stage3_pretrain" / "checkpoints"
    message = (f"no checkpoint under {ckpts} reads back: step-000012 (RuntimeError: PytorchStreamReader failed "
               "reading zip archive: failed finding central directory); step-000008 (UnpicklingError: invalid "
               f"load key, 'x'). Delete {ckpts} to start the stage afresh (or rerun with --force)")
    assert len(message) > failures.MESSAGE_CHARS
    code = f"class CorruptCheckpoint(RuntimeError):\n    pass\nraise CorruptCheckpoint({message!r})"
    run = tmp_path / "run"
    assert main(["run", str(standin(code)), "--run", str(run)]) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"error: 01_standin failed in cell 3: CorruptCheckpoint: no checkpoint under {ckpts} ")
    assert f" ... Delete {ckpts} to start the stage afresh (or rerun with --force) (notebook " in err
    short = failures.shorten(message)
    assert len(short) <= failures.MESSAGE_CHARS + 5 and short.endswith("(or rerun with --force)")


def test_a_cell_interrupted_by_ctrl_c_exits_130(standin, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(standin("raise KeyboardInterrupt")), "--run", str(run)]) == 130
    assert one_line_error(capsys).startswith("error: 01_standin failed in cell 3: interrupted; nothing finished "
                                             "was lost: rerun the same command to resume (notebook ")


def test_what_the_kernel_prints_outside_its_cells_goes_to_the_log(standin, tmp_path, capfd):
    """A kernel's own output (here at its exit, as a dying kernel's traceback) reaches neither
    the terminal's stdout nor its stderr; the stage's log keeps it."""
    code = ("import atexit, os\natexit.register(os.write, 1, b'kernel noise on 1\\n')\n"
            "atexit.register(os.write, 2, b'kernel noise on 2\\n')\nraise ValueError('boom')")
    run = tmp_path / "run"
    assert main(["run", str(standin(code)), "--run", str(run)]) == 1
    out, err = capfd.readouterr()
    assert one_line(err).startswith("error: 01_standin failed in cell 3: ValueError: boom (notebook ")
    assert "kernel noise" not in out + err
    deadline = time.time() + 10          # the kernel may still be exiting after the runner gave up on it
    while "kernel noise on 2" not in (run / "01_standin" / "log.txt").read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert "kernel noise on 1" in (run / "01_standin" / "log.txt").read_text()


def started(run: Path) -> bool:
    log = run / "01_standin" / "log.txt"
    return log.exists() and "started" in log.read_text()


def test_ctrl_c_during_a_stage_exits_130(standin, tmp_path, capsys):
    """SIGINT (Ctrl-C) reaches the runner while the stage runs: one line naming it, exit 130."""
    run = tmp_path / "run"

    def press_ctrl_c():
        deadline = time.time() + 60
        while not started(run) and time.time() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    assert main(["run", str(standin("import time\ntime.sleep(120)")), "--run", str(run)]) == 130
    sd = run / "01_standin"
    assert one_line_error(capsys) == (f"error: 01_standin failed: interrupted (SIGINT); nothing finished was "
                                      f"lost: rerun the same command to resume (notebook {sd / '01_standin.ipynb'}, "
                                      f"log {sd / 'log.txt'})")


@pytest.mark.slow
def test_sigterm_to_the_job_exits_143_and_prints_nothing_after_its_error(standin, tmp_path):
    """Slurm's time limit: SIGTERM to every process of the job, the runner and its kernel. The
    command ends in one line naming the signal and exits 143, and what would be printed while
    the process winds down (here an atexit hook; it was a dying kernel's DeadKernelError) is not."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.PROJ_ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", RUNNER, str(paths.NOTEBOOKS), "run",
                          str(standin("import time\ntime.sleep(120)")), "--run", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         cwd=paths.PROJ_ROOT, env=env)
    try:
        deadline = time.time() + 90
        while not started(run):
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.1)
        t0 = time.time()
        os.kill(int((run / "01_standin" / "kernel.pid").read_text()), signal.SIGTERM)
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        took = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    sd = run / "01_standin"
    assert p.returncode == 143, err
    assert one_line(err) == (f"error: 01_standin failed: interrupted (SIGTERM); nothing finished was lost: "
                             f"rerun the same command to resume (notebook {sd / '01_standin.ipynb'}, "
                             f"log {sd / 'log.txt'})")
    assert err.endswith(")\n") and "DeadKernelError" not in err       # the atexit noise went nowhere
    assert took < 20
