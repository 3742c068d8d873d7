"""Peak memory of packing a corpus as it grows 10x: in memory (``pack_file(cache=False)``, the
baseline) vs through the datasets cache (``lib.data.corpus.cached_blocks``), first run and later runs.

    python bench/corpus_memory.py              # 4 MB and 40 MB of Korean + English text
    python bench/corpus_memory.py --quick      # 1 MB and 10 MB

Each measurement is a fresh process: load the Llama-2 tokenizer, pack the file into 512-token
blocks, then draw 20 training batches of 8 blocks from a MixedStream. Reported: the growth of
the process's peak RSS over its RSS before packing (``VmHWM``), and of its anonymous memory
(``RssAnon``, sampled every 5 ms): file-backed pages of memory-mapped caches are counted in RSS but
are clean and the OS reclaims them, anonymous memory is what the process really holds. The
text is ../shared/data's Korean and English paragraphs, repeated (with a counter) to the size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("in_memory", "cached_cold", "cached_warm")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(path: str, mode: str, cache_dir: str) -> dict:
    """In this fresh process: pack ``path`` the ``mode`` way, draw batches; memory growth in bytes."""
    from transformers import LlamaTokenizerFast

    from lib.core import paths
    from lib.data.corpus import cached_blocks
    from lib.data.packing import MixedStream, pack_file
    tok = LlamaTokenizerFast.from_pretrained(str(paths.SHARED_DATA / "tokenizers" / "llama2" / "tokenizer.model"),
                                        add_bos_token=True)
    tok("warm up")
    rss0, anon0 = _status("VmRSS"), _status("RssAnon")
    peak_anon, done = [anon0], threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
            time.sleep(0.005)
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    if mode == "in_memory":
        blocks, rep = pack_file(tok, path, 512, cache=False)
    else:
        blocks, rep = cached_blocks(tok, path, 512, cache_dir=cache_dir)
    stream = MixedStream({"ko": blocks}, batch_size=8, seed=0)
    for step in range(20):
        stream.batch(step)
    seconds = time.time() - t0
    done.set()
    time.sleep(0.02)
    return {"rss_growth": _status("VmHWM") - rss0, "anon_growth": peak_anon[0] - anon0,
            "tokens": rep["tokens"], "seconds": seconds}


def make_corpus(out: Path, megabytes: float) -> Path:
    from lib.core import paths
    src = [paths.SHARED_DATA / "mono" / "ko" / "korquad_contexts.txt", paths.SHARED_DATA / "mono" / "en" / "mlqa_contexts.txt"]
    lines = [ln for f in src for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    target, size, i = megabytes * 1e6, 0, 0
    with open(out, "w", encoding="utf-8") as f:
        while size < target:
            line = f"{i} {lines[i % len(lines)]}\n"
            f.write(line)
            size += len(line.encode())
            i += 1
    return out


def run(path: Path, mode: str, cache_dir: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run([sys.executable, __file__, "--measure", str(path), mode, cache_dir], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 MB and 10 MB instead of 4 MB and 40 MB")
    ap.add_argument("--measure", nargs=3, metavar=("PATH", "MODE", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    from lib.core import paths
    if not (paths.SHARED_DATA / "tokenizers" / "llama2" / "tokenizer.model").exists():
        print("../shared/data is absent: this benchmark needs its tokenizer and text; skipped")
        print(json.dumps({"bench": "corpus_memory", "skipped": True, "machine": {"cores": os.cpu_count()}}))
        return 0
    small = 1.0 if args.quick else 4.0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mb in (small, 10 * small):
            path = make_corpus(Path(d) / f"corpus_{mb:g}mb.txt", mb)
            cache = str(Path(d) / f"cache_{mb:g}")
            for mode in MODES:              # cached_cold fills the cache that cached_warm reads
                rows.append({"megabytes": mb, "mode": mode, **run(path, mode, cache)})
    print("| corpus MB | tokens | mode | peak RSS growth MiB | peak anon growth MiB | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['megabytes']:g} | {r['tokens']:,} | {r['mode']} | {r['rss_growth'] / 2**20:.0f} | "
              f"{r['anon_growth'] / 2**20:.0f} | {r['seconds']:.1f} |")
    growth = {}
    for mode in MODES:
        a, b = [r for r in rows if r["mode"] == mode]
        growth[mode] = {"rss": b["rss_growth"] / max(a["rss_growth"], 1), "anon": b["anon_growth"] / max(a["anon_growth"], 1)}
    print("\n| mode | peak RSS growth at 10x / at 1x | peak anon growth at 10x / at 1x |\n|---|---|---|")
    for mode, g in growth.items():
        print(f"| {mode} | {g['rss']:.2f} | {g['anon']:.2f} |")
    print(json.dumps({"bench": "corpus_memory", "skipped": False, "machine": {"cores": os.cpu_count()},
                      "rows": rows, "growth_10x": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
