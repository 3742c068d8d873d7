"""Shared helpers of the benchmark scripts: isolated runs with their peak memory, the machine
they ran on, a printed table, and the final JSON line.

Every script in ``bench/`` prints a markdown table and, as its last line, one JSON object with
its figures (``{"bench": name, "machine": {...}, ...}``) so results can be collected with
``tail -n 1``. Speed is always reported as a ratio against a named baseline measured in the same
run, because absolute numbers on a shared machine move with the load.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict:
    """What the numbers came from: CPU, cores, load, torch and its threads, the GPU if any."""
    import torch
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakWindow:
    """Peak RSS of a window of this process (Linux): ``start()`` resets the kernel's high-water mark
    (``5`` into /proc/self/clear_refs) and notes the RSS; ``read()`` gives the peak since then
    (VmHWM) minus that RSS, in MiB: what the window itself added at its worst, with the imports and
    whatever existed before (e.g. the model's weights) left out. Elsewhere both read None."""

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.rss0 = self._status("VmRSS")
        except OSError:
            self.rss0 = None

    def read(self) -> float | None:
        if getattr(self, "rss0", None) is None:
            return None
        return round((self._status("VmHWM") - self.rss0) / 2**20, 1)

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {key} in /proc/self/status")


def _child(queue, fn, args, kwargs):
    try:
        import torch
        rss0 = peak_rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        out = fn(*args, **kwargs)
        mem = {"peak_rss_mb": round(peak_rss_mb(), 1), "rss_at_start_mb": round(rss0, 1)}
        if torch.cuda.is_available():
            mem["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        queue.put(("ok", out, mem))
    except BaseException:  # noqa: BLE001 - reported to the parent with the traceback
        queue.put(("error", traceback.format_exc(), None))


def isolated(fn: Callable, *args, **kwargs) -> tuple[Any, dict]:
    """``fn(*args, **kwargs)`` in a fresh spawned process: its result (picklable) and its memory
    (``peak_rss_mb``, ``rss_at_start_mb`` after imports, ``peak_cuda_mb`` on a GPU). Each variant
    of a comparison runs this way so one's memory or caches never count for the other."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args, kwargs))
    proc.start()
    status, out, mem = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark run {getattr(fn, '__name__', fn)} failed:\n{out}")
    return out, mem


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, perf_counter)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: Sequence[dict], cols: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows`` (dicts), columns in ``cols`` order (default: first row's)."""
    cols = list(cols or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def emit(name: str, **figures) -> dict:
    """Print the final JSON line of a benchmark (and return it)."""
    out = {"bench": name, "machine": machine(), **figures}
    print(json.dumps(out, ensure_ascii=False, default=float))
    return out
