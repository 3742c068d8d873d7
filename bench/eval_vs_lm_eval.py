"""Items/s of our 07 evaluation path against a plain ``lm_eval.simple_evaluate`` on the same model and items.

    .venv/bin/python bench/eval_vs_lm_eval.py --quick            # smoke run on toy data, ~30 s
    .venv/bin/python bench/eval_vs_lm_eval.py                    # 20 ARC questions per language, 3 runs each, ~3 min
    .venv/bin/python bench/eval_vs_lm_eval.py --limit 150 --repeats 2

The two variants, each in its own spawned process (``common.isolated``, imports done before the
clock starts), on one local model folder built here and one paired task. Each process evaluates the
model 3 times in a row, as notebook 07 evaluates every stage's model in one process; the figure is
the median of the 2nd and 3rd (the first pays one-off costs, shown as ``first_model_seconds``):

- ``ours``: :func:`lib.evaluate.evaluate_model`, what notebook 07 does per model: load the folder
  (fp32 on CPU), wrap it in ``HFLM(pretrained=<model object>, softmax_dtype=float32)``, one
  ``simple_evaluate`` over both languages with our generated task YAMLs, ``samples=`` the first
  ``limit`` items in English order, ``log_samples=True``; then write ``results.json``, one
  ``samples_<task>.jsonl`` per task and ``eval.json``.
- ``plain``: ``simple_evaluate(model="hf", model_args={"pretrained": <folder>, "dtype": "float32"})``,
  lm-eval's own loading, the same task YAMLs, batch size and seeds, ``limit=<limit>`` (both files
  list the items in the same order, so these are the same questions: checked), ``log_samples=True``
  (lm-eval's default, and ours needs the samples for 08); it writes nothing.

The model: a random ``LlamaForCausalLM`` saved with the real Llama-2 tokenizer and scored on the
real ARC-Challenge pair from ../shared/data; without that folder, the toy world's English BPE
tokenizer and its toy ARC pair (a note says so). Random weights cost the same forward passes as
trained ones, and the accuracies of both variants must agree exactly (checked).

Figures: items/s (questions scored, both languages), log-likelihood requests/s (one per option),
the seconds inside HFLM's ``_loglikelihood_tokens`` (model + softmax: the same code on the same
requests in both) and the rest (loading, building requests, metrics, logging, writing: where
the two paths differ), peak RSS. ``ratio_items_per_s`` = ours / plain (fastest run of each; the
runs alternate), ``ratio_other_seconds`` = ours / plain seconds outside the model calls. One torch
thread by default (``--threads``): on a shared 2-core machine two threads make timings jumpy.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from common import REPO, Timer, emit, isolated, table

SHARED = REPO.parent / "shared" / "data"
PAIR = "arc"


# ---------------------------------------------------------------------------- the fixture


def build_model(tok, tokenizer_model: Path, out: Path, hidden: int, layers: int) -> Path:
    """A seeded random Llama over ``tok``'s vocab, saved as a plain ``from_pretrained`` folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.copy(tokenizer_model, out / "tokenizer.model")
    return out


def fixture(root: Path, data: str, hidden: int, layers: int) -> dict:
    """The model folder and the pair spec: real (Llama-2 tokenizer, ARC-Challenge) or toy."""
    from lib.tokenizer import hf_tokenizer_from_sp, load_sp_model
    use_shared = data == "shared" or (data == "auto" and (SHARED / "bench/arc_challenge").is_dir())
    if use_shared:
        sp_file = SHARED / "tokenizers/llama2/tokenizer.model"
        arc = SHARED / "bench/arc_challenge"
        spec = {"en": str(arc / "en_test.jsonl"), "ko": str(arc / "ko_test.jsonl"), "format": "arc"}
        source = "shared: Llama-2 tokenizer, ARC-Challenge en/ko"
    else:
        why = "--data toy" if data == "toy" else f"{SHARED} is absent"
        print(f"note: {why}: the toy world's tokenizer and toy ARC pair instead of Llama-2 and ARC-Challenge")
        from lib.toymodel import train_base_tokenizer
        from lib.toyworld import WorldSpec, build_world, write_world
        world = root / "world"
        write_world(build_world(WorldSpec()), world)
        sp_file = Path(train_base_tokenizer(world, root / "base_tokenizer")["path"])
        spec = {"en": str(world / "eval/knowledge_en.jsonl"), "ko": str(world / "eval/knowledge_ko.jsonl"), "format": "arc"}
        source = "toy world: English BPE tokenizer, toy ARC en/ko"
    tok = hf_tokenizer_from_sp(load_sp_model(sp_file))
    model_dir = build_model(tok, sp_file, root / "model", hidden, layers)
    return {"model": str(model_dir), "spec": spec, "source": source, "vocab": len(tok)}


# ---------------------------------------------------------------------------- the two variants

MODELS_PER_PROCESS = 3        # models evaluated one after another in each timed process


def _warm_imports() -> None:
    """Import what both variants use before the clock starts: a notebook pays it once per
    process, not per model (transformers imports lazily: ~1,400 modules, seconds, at the first load)."""
    import lm_eval.models.huggingface  # noqa: F401
    from lm_eval import simple_evaluate  # noqa: F401
    from lm_eval.tasks import TaskManager  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, LlamaTokenizer  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    import lib.evaluate  # noqa: F401


def _count_loglikelihood() -> dict:
    """Count and time HFLM's ``_loglikelihood_tokens`` (the batched model calls) in this process."""
    import time

    from lm_eval.models.huggingface import HFLM
    stats = {"requests": 0, "ll_seconds": 0.0}
    inner = HFLM._loglikelihood_tokens

    def timed(self, requests, *a, **k):
        t0 = time.perf_counter()
        out = inner(self, requests, *a, **k)
        stats["ll_seconds"] += time.perf_counter() - t0
        stats["requests"] += len(requests)
        return out
    HFLM._loglikelihood_tokens = timed
    return stats


def _summary(res: dict, names: list[str]) -> dict:
    return {t: {"acc": res["results"][t]["acc,none"], "acc_norm": res["results"][t]["acc_norm,none"],
                "ids": [s["doc"]["id"] for s in sorted(res["samples"][t], key=lambda s: s["doc_id"])]}
            for t in names}


def _setup(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _warm_imports()


def run_ours(model_dir: str, spec: dict, stage_dir: str, batch_size: int, limit: int, threads: int) -> dict:
    """lib.evaluate.evaluate_model as notebook 07 calls it; reads back what it wrote."""
    _setup(threads)
    import json

    from lib import evaltasks as ET
    from lib import evaluate as E
    stats = _count_loglikelihood()
    pairs = {PAIR: ET.read_pair(PAIR, spec)}
    times = []
    for i in range(MODELS_PER_PROCESS):        # notebook 07 evaluates every model in one process
        m = E.ModelSpec(f"bench{i}", "baseline", None, None, model_dir)
        with Timer() as t:
            entry = E.evaluate_model(m, pairs, stage_dir, device="cpu", batch_size=batch_size, limit=limit)
        times.append(t.seconds)
    tasks = {}
    for lang, v in entry["tasks"][PAIR].items():
        rows = [json.loads(line) for line in Path(v["samples"]).read_text(encoding="utf-8").splitlines()]
        tasks[ET.task_name(PAIR, lang)] = {"acc": v["acc"], "acc_norm": v["acc_norm"],
                                           "ids": [r["doc"]["id"] for r in sorted(rows, key=lambda r: r["doc_id"])]}
    return {**_per_model(times, stats), "tasks": tasks}


def run_plain(model_dir: str, tasks_dir: str, batch_size: int, limit: int, threads: int) -> dict:
    """lm-eval's own path: HFLM loads the folder itself; same YAMLs, batch size, seeds, limit."""
    _setup(threads)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    stats = _count_loglikelihood()
    names = [f"{PAIR}_en", f"{PAIR}_ko"]
    times = []
    for _ in range(MODELS_PER_PROCESS):
        with Timer() as t:
            tm = TaskManager(include_path=tasks_dir, include_defaults=False)
            res = simple_evaluate(model="hf", model_args={"pretrained": model_dir, "dtype": "float32"},
                                  tasks=names, num_fewshot=0, batch_size=batch_size, device="cpu",
                                  limit=limit or None, log_samples=True, task_manager=tm,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        times.append(t.seconds)
    return {**_per_model(times, stats), "tasks": _summary(res, names)}


def _per_model(times: list[float], stats: dict) -> dict:
    """Seconds per model: the median over the models after the first of a process (the first
    pays one-off costs a notebook pays once), and the first's own time; ``ll_seconds`` and
    ``requests`` likewise per model."""
    n = len(times)
    return {"seconds": statistics.median(times[1:] or times), "first_model_seconds": times[0],
            "ll_seconds": stats["ll_seconds"] / n, "requests": stats["requests"] // n}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~30 s): toy data unless --data shared, --limit 12, 1 repeat, tiny model")
    ap.add_argument("--limit", type=int, default=20, help="items per language (0: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (both variants)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating; the fastest counts")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each run (1: steadier timings on a shared 2-core machine)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the random Llama")
    ap.add_argument("--layers", type=int, default=4, help="layers of the random Llama")
    ap.add_argument("--data", choices=("auto", "shared", "toy"), default="auto",
                    help="auto: ../shared/data when present, else the toy world")
    args = ap.parse_args()
    if args.quick:
        args.limit, args.repeats, args.hidden, args.layers = 12, 1, 64, 2
        if args.data == "auto":
            args.data = "toy"

    from lib import evaltasks as ET
    root = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        fx = fixture(root, args.data, args.hidden, args.layers)
        tasks_dir = root / "stage" / "tasks"
        pair = ET.write_tasks({PAIR: fx["spec"]}, tasks_dir)[PAIR]
        limit = min(args.limit, pair.n) if args.limit > 0 else 0
        print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, vocab {fx['vocab']:,}; "
              f"data: {fx['source']}; {limit or pair.n} items per language, batch {args.batch_size}, "
              f"{args.threads} torch thread(s)")

        runs: dict[str, list[tuple[dict, dict]]] = {"ours": [], "plain": []}
        for r in range(args.repeats):
            order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
            for name in order:
                if name == "ours":
                    out = isolated(run_ours, fx["model"], fx["spec"], str(root / "stage"), args.batch_size,
                                   limit, args.threads)
                else:
                    out = isolated(run_plain, fx["model"], str(tasks_dir), args.batch_size, limit, args.threads)
                runs[name].append(out)
                print(f"  run {r + 1} {name}: {out[0]['seconds']:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    # both variants must have scored the same items with the same results
    ours_tasks, plain_tasks = runs["ours"][0][0]["tasks"], runs["plain"][0][0]["tasks"]
    same_items = all(ours_tasks[t]["ids"] == plain_tasks[t]["ids"] for t in ours_tasks)
    same_acc = all(ours_tasks[t][k] == plain_tasks[t][k] for t in ours_tasks for k in ("acc", "acc_norm"))

    rows, figures = [], {}
    for name, outs in runs.items():
        best, mem = min(outs, key=lambda o: o[0]["seconds"])
        items = sum(len(v["ids"]) for v in best["tasks"].values())
        row = {"variant": name, "items": items, "requests": best["requests"], "seconds": best["seconds"],
               "items/s": items / best["seconds"], "requests/s": best["requests"] / best["seconds"],
               "ll_seconds": best["ll_seconds"], "other_seconds": best["seconds"] - best["ll_seconds"],
               "median_seconds": statistics.median(o[0]["seconds"] for o in outs),
               "first_model_seconds": best["first_model_seconds"],
               "peak_rss_mb": mem["peak_rss_mb"], "rss_at_start_mb": mem["rss_at_start_mb"]}
        rows.append(row)
        figures[name] = {k.replace("/", "_per_"): v for k, v in row.items() if k != "variant"}
        figures[name]["acc"] = {t: v["acc"] for t, v in best["tasks"].items()}
    ratio = rows[0]["items/s"] / rows[1]["items/s"]
    # the model calls are the same code on the same requests in both: the paths differ in the rest
    other_ratio = rows[0]["other_seconds"] / rows[1]["other_seconds"]
    print()
    print(table(rows))
    print()
    print(f"ratio ours/plain items/s: {ratio:.3f} (target >= 1.0); same items: {same_items}; "
          f"same acc/acc_norm: {same_acc}; seconds outside the model calls ours/plain: {other_ratio:.3f}")
    emit("eval_vs_lm_eval", baseline="plain lm_eval.simple_evaluate (HFLM loads the folder)",
         ratio_items_per_s=ratio, ratio_other_seconds=other_ratio, same_items=same_items, same_acc=same_acc,
         data=fx["source"],
         model={"hidden": args.hidden, "layers": args.layers, "vocab": fx["vocab"]},
         limit=limit, batch_size=args.batch_size, repeats=args.repeats, threads=args.threads, **figures)


if __name__ == "__main__":
    main()
