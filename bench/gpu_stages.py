"""The pipeline's stages on a machine without Papermill, and the key figures of a run's stages:
parts c and d of ``bench/gpu_check.sh``.

    python bench/gpu_stages.py run params/micro.yaml --run try --only 00,01   # ~30 s on a CPU
    python bench/gpu_stages.py collect outputs/try                                    # one JSON line a stage

``run`` is ``python -m lib.pipeline run`` (:func:`lib.run.pipeline.run_pipeline`: the same checks, run
lock, resume, shared stages and stage folders) with one difference: each notebook's code cells are
executed in a fresh Python process instead of a Jupyter kernel, with the parameters injected after
the ``parameters`` cell as Papermill injects them. A GPU image may hold torch, transformers and
peft but no Papermill, nbclient or ipykernel, and has no network to install them; the notebooks
use no magics, so their cells are plain Python. The executed notebook is not written; the cells'
output goes to the stage's ``log.txt`` and to this process's output.

``collect`` reads ``<run>/<NN_stage>/metrics.json`` (what the tests read too, never notebook
text) and prints, per stage: seconds from ``config.json`` to ``DONE``, first and last training
loss, tokens/s, the precision record, and the figures a precision bug moves: 05's ``ko_ppl``
measured before training next to its step-0 evaluation (``eval_before_training``), 06's held-out
loss likewise (equal within :data:`STEP0_RTOL`: ``*_step0_ok``), and 06's DPO step-0 evaluation
(reward accuracy and margin must be 0: policy and reference are the same weights: ``step0_ok``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CELLS = "_cells"                 # the internal subcommand: run one notebook's cells in this process
STEP0_RTOL = 1e-4                # "before training" vs the step-0 evaluation of the same weights


# ----------------------------------------------------------------------------- run

def exec_cells(notebook: Path, params: dict, log: Path | None = None) -> None:
    """Execute ``notebook``'s code cells in order in this process, ``params`` assigned right after
    the cell tagged ``parameters`` (Papermill's semantics), with the notebooks folder as cwd."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    os.chdir(notebook.parent)
    ns: dict = {"__name__": "__main__"}
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in code):
        raise ValueError(f"{notebook}: no code cell is tagged 'parameters'")
    for i, cell in enumerate(code):
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        try:
            exec(compile(src, f"{notebook.name} [code cell {i}]", "exec"), ns)   # noqa: S102 - our own notebooks
        except BaseException:
            print(f"error in {notebook.name}, code cell {i}:\n{src[:400]}", file=sys.stderr, flush=True)
            raise
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(params)


def stage_in_subprocess(plan, run, progress: bool = True, threads: int = 0) -> Path:
    """Stand-in for :func:`lib.run.pipeline.run_stage`: the stage's cells in a fresh process (with
    the profile's torch threads in its environment, as the runner gives a kernel)."""
    import shutil

    from lib.core import paths
    from lib.core.stage import threads_env
    from lib.run.pipeline import StageFailed
    sd = paths.stage_dir(run, plan.stage)
    if sd.is_symlink():
        sd.unlink()
    elif plan.fresh and sd.exists():
        shutil.rmtree(sd)
    elif plan.incremental:
        (sd / "DONE").unlink(missing_ok=True)
    sd.mkdir(parents=True, exist_ok=True)
    log = sd / "log.txt"
    args = sd / "injected_parameters.json"
    args.write_text(json.dumps(plan.params, ensure_ascii=False), encoding="utf-8")
    cmd = [sys.executable, str(Path(__file__).resolve()), CELLS, str(paths.notebook_path(plan.stage)), str(args)]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {plan.stage} (bench/gpu_stages.py, no Papermill)\n")
    # the cells' output: into log.txt and this process's stdout
    with threads_env(threads), \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, \
            open(log, "a", encoding="utf-8") as f:
        for line in proc.stdout:
            f.write(line)
            sys.stdout.write(line)
        rc = proc.wait()
    if rc != 0:
        tail = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()][-1:]
        raise StageFailed(f"{plan.stage} failed (exit code {rc}): {tail[0] if tail else 'no output'} (log {log})")
    if not (sd / "DONE").exists():
        raise StageFailed(f"{plan.stage} ran to the end but wrote no DONE (log {log})")
    return sd


def run(params: str, run_name: str, only: str | None, start: str | None) -> int:
    from lib.run import pipeline
    pipeline.run_stage = stage_in_subprocess
    try:
        plans = pipeline.run_pipeline(params, run=run_name, start=start, only=only, progress=False)
    except (pipeline.StageFailed, pipeline.ParamsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"ran": [p.stage for p in plans if p.action == "run"],
                      "skipped": [p.stage for p in plans if p.action == "skip"]}))
    return 0


# ----------------------------------------------------------------------------- collect

def _get(d, *keys):
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _loss_ends(m: dict) -> tuple:
    if isinstance(m.get("loss"), dict):
        return m["loss"].get("first"), m["loss"].get("last")
    rows = _get(m, "curves", "loss")                  # 03: [{"step", "loss"}, ...]
    if rows and isinstance(rows[0], dict):
        return rows[0].get("loss"), rows[-1].get("loss")
    return (rows[0], rows[-1]) if rows else (None, None)


def stage_figures(stage_dir: Path) -> dict:
    """The key figures of one finished (or failed) stage folder."""
    out: dict = {"stage": stage_dir.name, "done": (stage_dir / "DONE").exists()}
    mf = stage_dir / "metrics.json"
    if not mf.is_file():
        return out
    m = json.loads(mf.read_text(encoding="utf-8"))
    cfg = stage_dir / "config.json"
    if cfg.is_file() and out["done"]:
        out["seconds"] = round((stage_dir / "DONE").stat().st_mtime - cfg.stat().st_mtime, 1)
    first, last = _loss_ends(m)
    out.update({k: v for k, v in {
        "method": m.get("method"), "precision": m.get("precision"), "loss_first": first, "loss_last": last,
        "train_seconds": m.get("train_seconds"), "tokens_per_second": m.get("tokens_per_second"),
        "pairs_per_second": m.get("pairs_per_second"), "retrieval_p1": m.get("retrieval_p1"),
        "ko_ppl": m.get("ko_ppl"), "ko_ppl_step0_eval": _get(m, "curves", "eval_ko_ppl", 0),
        "ko_ppl_eval_before_training": _get(m, "eval_before_training", "ko_ppl"),
        "heldout_loss_before": _get(m, "heldout_loss", "before", "loss"),
        "heldout_loss_after": _get(m, "heldout_loss", "after", "loss"),
        "heldout_loss_step0_eval": _get(m, "curves", "eval_loss", 0)}.items() if v is not None})
    # the same weights and data measured before training and by the loop's step-0 evaluation:
    # equal unless the two run in different precisions (F2b)
    for name, a, b in (("ko_ppl_step0_ok", "ko_ppl_eval_before_training", "ko_ppl_step0_eval"),
                       ("heldout_loss_step0_ok", "heldout_loss_before", "heldout_loss_step0_eval")):
        if isinstance(out.get(a), (int, float)) and isinstance(out.get(b), (int, float)):
            out[name] = abs(out[a] - out[b]) <= STEP0_RTOL * abs(out[a])
    d = m.get("dpo")
    if isinstance(d, dict):
        acc0, margin0 = _get(d, "curves", "eval_reward_accuracy", 0), _get(d, "curves", "eval_margin", 0)
        out["dpo"] = {k: v for k, v in {
            "precision": d.get("precision"), "loss_first": _get(d, "loss", "first"), "loss_last": _get(d, "loss", "last"),
            "heldout_before": {k: _get(d, "heldout", "before", k) for k in ("reward_accuracy", "margin")},
            "step0_eval_reward_accuracy": acc0, "step0_eval_margin": margin0,
            "step1_train_reward_accuracy": _get(d, "curves", "reward_accuracy", 0),
            "reference_seconds": d.get("reference_seconds"), "tokens_per_second": d.get("tokens_per_second")}.items()
            if v is not None}
        if acc0 is not None and margin0 is not None:
            out["dpo"]["step0_ok"] = acc0 == 0.0 and abs(margin0) < 1e-6
    return out


def collect(run_dirs: list[str]) -> int:
    found = 0
    for rd in map(Path, run_dirs):
        if not rd.is_dir():
            print(json.dumps({"run": str(rd), "error": "no such run folder"}))
            continue
        for sd in sorted(p for p in rd.iterdir() if p.is_dir() and p.name[:2].isdigit()):
            print(json.dumps({"run": rd.name, **stage_figures(sd)}, default=str))
            found += 1
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CELLS]:                              # internal: python gpu_stages.py _cells NB PARAMS.json
        exec_cells(Path(argv[1]), json.loads(Path(argv[2]).read_text(encoding="utf-8")))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="python -m lib.pipeline run, each notebook's cells in a fresh process")
    r.add_argument("params")
    r.add_argument("--run", required=True, help="run name (folder under outputs/) or absolute path")
    r.add_argument("--only", help="comma-separated stages, e.g. 00,01,02")
    r.add_argument("--from", dest="start", help="first stage to run")
    c = sub.add_parser("collect", help="key figures of each stage of run folders, one JSON line a stage")
    c.add_argument("runs", nargs="+", help="run folders, e.g. outputs/try")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run(args.params, args.run, args.only, args.start)
    return collect(args.runs)


if __name__ == "__main__":
    sys.exit(main())
