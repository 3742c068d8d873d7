"""Items/s of our 07 evaluation path against a plain ``lm_eval.simple_evaluate`` on the same model and items.

    .venv/bin/python bench/eval_vs_lm_eval.py --quick            # smoke run on toy data, ~1 min
    .venv/bin/python bench/eval_vs_lm_eval.py                    # ARC (20 questions a language) and Belebele (10), ~8 min
    .venv/bin/python bench/eval_vs_lm_eval.py --cases belebele --bb-limit 20 --repeats 2

Two cases, each on the same model: ``arc`` (short questions, options of a few words) and
``belebele``, the long-context case (a passage of hundreds of tokens shared by the 4 options, and
``acc_mutual_info``'s neutral-prompt requests): there 07's ``ContextOnceHFLM`` (:mod:`lib.eval.kvscore`)
runs each passage once instead of once per option; the target is >= 2x plain.

The variants, each in its own spawned process (``common.isolated``, imports done before the
clock starts), on one local model folder built here and one paired task. Each process evaluates the
model 3 times in a row, as notebook 07 evaluates every stage's model in one process; the figure is
the faster of the 2nd and 3rd (the first pays one-off costs, shown as ``first_model_seconds``):

- ``ours``: :func:`lib.eval.harness.evaluate_model`, what notebook 07 does per model: load the folder
  (fp32 on CPU), wrap it in ``ContextOnceHFLM(pretrained=<model object>, softmax_dtype=float32)``
  (07's default, ``context_once: true``), one ``simple_evaluate`` over both languages with our
  generated task YAMLs, ``samples=`` the first ``limit`` items in English order,
  ``log_samples=True``; then write ``results.json``, one ``samples_<task>.jsonl`` per task and
  ``eval.json``.
- ``ours_hflm`` (``--with-hflm``): the same with ``context_once=False`` (lm-eval's ``HFLM``).
- ``plain``: ``simple_evaluate(model="hf", model_args={"pretrained": <folder>, "dtype": "float32"})``,
  lm-eval's own loading, the same task YAMLs, batch size and seeds, ``limit=<limit>`` (both files
  list the items in the same order, so these are the same questions: checked), ``log_samples=True``
  (lm-eval's default, and ours needs the samples for 08); it writes nothing.

The model: a random ``LlamaForCausalLM`` saved with the real Llama-2 tokenizer and scored on the
real ARC-Challenge and Belebele (eng_Latn / kor_Hang) pairs from ../shared/data; without that
folder, the toy world's English BPE tokenizer, its toy ARC pair and Belebele-shaped items built
from it (passages of 8 toy questions with their answers; a note says so). Random weights cost the
same forward passes as trained ones, and the accuracies of the variants must agree exactly (checked).

Figures per case: items/s (questions scored, both languages), log-likelihood requests/s (one per
option), the seconds inside ``_loglikelihood_tokens`` (the model calls and softmax) and the rest
(loading, building requests, metrics, logging, writing), peak RSS. ``ratio_items_per_s`` = ours /
plain (fastest run of each; the runs alternate), ``ratio_other_seconds`` = ours / plain seconds
outside the model calls. One torch thread by default (``--threads``): on a shared 2-core machine
two threads make timings jumpy.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from common import REPO, Timer, emit, isolated, table

SHARED = REPO.parent / "shared" / "data"
CASES = ("arc", "belebele")


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


def belebele_from_arc(arc_files: dict[str, Path], out: Path, per_passage: int = 8) -> dict:
    """Belebele-shaped items from an ARC pair: a passage of ``per_passage`` questions with their
    answers, asked about its first question, the same in both languages."""
    import json
    rows = {lang: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
            for lang, f in arc_files.items()}
    spec = {"format": "belebele"}
    for lang, recs in rows.items():
        items = []
        for k in range(len(recs) // per_passage):
            chunk = recs[k * per_passage:(k + 1) * per_passage]
            text = " ".join(f"{r['question']} {r['choices']['text'][r['choices']['label'].index(r['answerKey'])]}."
                            for r in chunk)
            q = chunk[0]
            items.append({"link": f"toy/{k}", "question_number": 1, "flores_passage": text, "question": q["question"],
                          **{f"mc_answer{i + 1}": t for i, t in enumerate(q["choices"]["text"][:4])},
                          "correct_answer_num": str(q["choices"]["label"].index(q["answerKey"]) + 1)})
        f = out / f"belebele_{lang}.jsonl"
        f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        spec[lang] = str(f)
    return spec


def fixture(root: Path, data: str, hidden: int, layers: int) -> dict:
    """The model folder and the pair spec of each case: real (Llama-2 tokenizer, ARC-Challenge,
    Belebele) or toy."""
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model
    use_shared = data == "shared" or (data == "auto" and (SHARED / "bench/arc_challenge").is_dir()
                                      and (SHARED / "bench/belebele").is_dir())
    if use_shared:
        sp_file = SHARED / "tokenizers/llama2/tokenizer.model"
        arc, bb = SHARED / "bench/arc_challenge", SHARED / "bench/belebele"
        specs = {"arc": {"en": str(arc / "en_test.jsonl"), "ko": str(arc / "ko_test.jsonl"), "format": "arc"},
                 "belebele": {"en": str(bb / "eng_Latn.jsonl"), "ko": str(bb / "kor_Hang.jsonl"),
                              "format": "belebele"}}
        source = "shared: Llama-2 tokenizer, ARC-Challenge en/ko, Belebele eng_Latn/kor_Hang"
    else:
        why = "--data toy" if data == "toy" else f"{SHARED} is absent"
        print(f"note: {why}: the toy world's tokenizer, toy ARC pair and Belebele-shaped items built from it "
              "instead of Llama-2, ARC-Challenge and Belebele")
        from lib.world import WorldSpec, build_world, write_world
        from lib.world.basemodel import train_base_tokenizer
        world = root / "world"
        write_world(build_world(WorldSpec()), world)
        sp_file = Path(train_base_tokenizer(world, root / "base_tokenizer")["path"])
        files = {lang: world / f"eval/knowledge_{lang}.jsonl" for lang in ("en", "ko")}
        specs = {"arc": {**{k: str(v) for k, v in files.items()}, "format": "arc"},
                 "belebele": belebele_from_arc(files, root)}
        source = "toy world: English BPE tokenizer, toy ARC en/ko, Belebele-shaped toy passages"
    tok = hf_tokenizer_from_sp(load_sp_model(sp_file))
    model_dir = build_model(tok, sp_file, root / "model", hidden, layers)
    return {"model": str(model_dir), "specs": specs, "source": source, "vocab": len(tok)}


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

    import lib.eval.harness  # noqa: F401


def _count_loglikelihood() -> dict:
    """Count and time ``_loglikelihood_tokens`` (the batched model calls) in this process, of
    HFLM and of ContextOnceHFLM (the outermost call only: the latter may fall back on the former)."""
    import time

    from lm_eval.models.huggingface import HFLM

    from lib.eval.kvscore import ContextOnceHFLM
    stats = {"requests": 0, "ll_seconds": 0.0, "depth": 0}

    def wrap(inner):
        def timed(self, requests, *a, **k):
            stats["depth"] += 1
            t0 = time.perf_counter()
            try:
                return inner(self, requests, *a, **k)
            finally:
                stats["depth"] -= 1
                if stats["depth"] == 0:
                    stats["ll_seconds"] += time.perf_counter() - t0
                    stats["requests"] += len(requests)
        return timed
    for cls in (HFLM, ContextOnceHFLM):
        cls._loglikelihood_tokens = wrap(cls.__dict__["_loglikelihood_tokens"])
    return stats


def _summary(res: dict, names: list[str], fmt: str) -> dict:
    from lib.eval import tasks as ET
    return {t: {"acc": res["results"][t]["acc,none"], "acc_norm": res["results"][t]["acc_norm,none"],
                "ids": [ET.item_id(fmt, s["doc"]) for s in sorted(res["samples"][t], key=lambda s: s["doc_id"])]}
            for t in names}


def _setup(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _warm_imports()


def run_ours(model_dir: str, pair: str, spec: dict, stage_dir: str, batch_size: int, limit: int, threads: int,
             context_once: bool = True) -> dict:
    """lib.eval.harness.evaluate_model as notebook 07 calls it; reads back what it wrote."""
    _setup(threads)
    import json

    from lib.eval import harness as E
    from lib.eval import tasks as ET
    stats = _count_loglikelihood()
    pairs = {pair: ET.read_pair(pair, spec)}
    times, ll = [], []
    for i in range(MODELS_PER_PROCESS):        # notebook 07 evaluates every model in one process
        m = E.ModelSpec(f"bench{i}", "baseline", None, None, model_dir)
        ll0 = stats["ll_seconds"]
        with Timer() as t:
            entry = E.evaluate_model(m, pairs, stage_dir, device="cpu", batch_size=batch_size, limit=limit,
                                     context_once=context_once)
        times.append(t.seconds)
        ll.append(stats["ll_seconds"] - ll0)
    tasks = {}
    for lang, v in entry["tasks"][pair].items():
        rows = [json.loads(line) for line in Path(v["samples"]).read_text(encoding="utf-8").splitlines()]
        tasks[ET.task_name(pair, lang)] = {"acc": v["acc"], "acc_norm": v["acc_norm"],
                                           "ids": [r["doc"]["id"] for r in sorted(rows, key=lambda r: r["doc_id"])]}
    return {**_per_model(times, ll, stats), "tasks": tasks}


def run_plain(model_dir: str, pair: str, tasks_dir: str, batch_size: int, limit: int, threads: int) -> dict:
    """lm-eval's own path: HFLM loads the folder itself; same YAMLs, batch size, seeds, limit."""
    _setup(threads)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    stats = _count_loglikelihood()
    names = [f"{pair}_en", f"{pair}_ko"]
    times, ll = [], []
    for _ in range(MODELS_PER_PROCESS):
        ll0 = stats["ll_seconds"]
        with Timer() as t:
            tm = TaskManager(include_path=tasks_dir, include_defaults=False)
            res = simple_evaluate(model="hf", model_args={"pretrained": model_dir, "dtype": "float32"},
                                  tasks=names, num_fewshot=0, batch_size=batch_size, device="cpu",
                                  limit=limit or None, log_samples=True, task_manager=tm,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        times.append(t.seconds)
        ll.append(stats["ll_seconds"] - ll0)
    return {**_per_model(times, ll, stats), "tasks": _summary(res, names, pair)}   # the case is its format


def _per_model(times: list[float], ll: list[float], stats: dict) -> dict:
    """Seconds per model: the median over the models after the first of a process (the first
    pays one-off costs a notebook pays once), and the first's own time; ``ll_seconds`` (inside
    ``_loglikelihood_tokens``) of the same model as ``seconds``; ``requests`` per model."""
    n = len(times)
    later = sorted(range(1, n), key=times.__getitem__) or [0]
    mid = later[(len(later) - 1) // 2]           # the model whose time is the (lower) median
    return {"seconds": times[mid], "first_model_seconds": times[0], "ll_seconds": ll[mid],
            "requests": stats["requests"] // n}


# ---------------------------------------------------------------------------- one case


def run_case(case: str, fx: dict, root: Path, limit_arg: int, args) -> dict:
    """Every variant of one case, alternating over the repeats; the figures of each and the ratios."""
    from lib.eval import tasks as ET
    stage = root / f"stage_{case}"
    tasks_dir = stage / "tasks"
    pair = ET.write_tasks({case: fx["specs"][case]}, tasks_dir)[case]
    limit = min(limit_arg, pair.n) if limit_arg > 0 else 0
    batch = args.bb_batch_size if case == "belebele" else args.batch_size
    print(f"\n== {case}: {limit or pair.n} items per language, batch {batch}")
    names = ["ours", "plain"] + (["ours_hflm"] if args.with_hflm else [])
    runs: dict[str, list[tuple[dict, dict]]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name == "plain":
                out = isolated(run_plain, fx["model"], case, str(tasks_dir), batch, limit, args.threads)
            else:
                out = isolated(run_ours, fx["model"], case, fx["specs"][case], str(stage), batch, limit,
                               args.threads, name == "ours")
            runs[name].append(out)
            print(f"  run {r + 1} {name}: {out[0]['seconds']:.2f} s")
    # every variant must have scored the same items with the same results
    first = {n: runs[n][0][0]["tasks"] for n in names}
    same_items = all(first[n][t]["ids"] == first["plain"][t]["ids"] for n in names for t in first["plain"])
    same_acc = all(first[n][t][k] == first["plain"][t][k] for n in names for t in first["plain"]
                   for k in ("acc", "acc_norm"))
    rows, figures = [], {}
    for name, outs in runs.items():
        best, mem = min(outs, key=lambda o: o[0]["seconds"])
        items = sum(len(v["ids"]) for v in best["tasks"].values())
        row = {"case": case, "variant": name, "items": items, "requests": best["requests"],
               "seconds": best["seconds"], "items/s": items / best["seconds"],
               "requests/s": best["requests"] / best["seconds"],
               "ll_seconds": best["ll_seconds"], "other_seconds": best["seconds"] - best["ll_seconds"],
               "median_seconds": statistics.median(o[0]["seconds"] for o in outs),
               "first_model_seconds": best["first_model_seconds"],
               "peak_rss_mb": mem["peak_rss_mb"], "rss_at_start_mb": mem["rss_at_start_mb"]}
        rows.append(row)
        figures[name] = {k.replace("/", "_per_"): v for k, v in row.items() if k not in ("variant", "case")}
        figures[name]["acc"] = {t: v["acc"] for t, v in best["tasks"].items()}
    by = {r["variant"]: r for r in rows}
    return {"rows": rows, "figures": figures, "limit": limit, "batch_size": batch,
            "ratio_items_per_s": by["ours"]["items/s"] / by["plain"]["items/s"],
            "ratio_other_seconds": by["ours"]["other_seconds"] / by["plain"]["other_seconds"],
            "ratio_model_seconds": by["ours"]["ll_seconds"] / by["plain"]["ll_seconds"],
            "same_items": same_items, "same_acc": same_acc}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~1 min): toy data unless --data shared, --limit 12, --bb-limit 6, "
                         "1 repeat, tiny model")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: arc, belebele")
    ap.add_argument("--limit", type=int, default=20, help="ARC items per language (0: all)")
    ap.add_argument("--bb-limit", type=int, default=10, help="Belebele items per language (0: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (ARC, all variants)")
    ap.add_argument("--bb-batch-size", type=int, default=8,
                    help="requests per forward pass for Belebele (HFLM holds batch x length x vocab "
                         "log-probabilities at once: ~1 GB at 8 x 900 tokens x 32,000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating; the fastest counts")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each run (1: steadier timings on a shared 2-core machine)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the random Llama")
    ap.add_argument("--layers", type=int, default=4, help="layers of the random Llama")
    ap.add_argument("--with-hflm", action="store_true",
                    help="also time 07's path with context_once=False (lm-eval's HFLM on our model object)")
    ap.add_argument("--data", choices=("auto", "shared", "toy"), default="auto",
                    help="auto: ../shared/data when present, else the toy world")
    args = ap.parse_args()
    if args.quick:
        args.limit, args.bb_limit, args.repeats, args.hidden, args.layers = 12, 6, 1, 64, 2
        if args.data == "auto":
            args.data = "toy"
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        ap.error(f"--cases: choose among {', '.join(CASES)}, got {args.cases!r}")

    root = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        fx = fixture(root, args.data, args.hidden, args.layers)
        print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, vocab {fx['vocab']:,}; "
              f"data: {fx['source']}; {args.threads} torch thread(s)")
        results = {c: run_case(c, fx, root, args.bb_limit if c == "belebele" else args.limit, args) for c in cases}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(table([r for res in results.values() for r in res["rows"]]))
    print()
    for c, res in results.items():
        target = " (target >= 2.0)" if c == "belebele" else ""
        print(f"{c}: ratio ours/plain items/s {res['ratio_items_per_s']:.3f}{target}; same items: "
              f"{res['same_items']}; same acc/acc_norm: {res['same_acc']}; seconds in model calls ours/plain: "
              f"{res['ratio_model_seconds']:.3f}; outside them: {res['ratio_other_seconds']:.3f}")
    main_case = "belebele" if "belebele" in results else cases[0]
    emit("eval_vs_lm_eval", baseline="plain lm_eval.simple_evaluate (HFLM loads the folder)",
         ratio_items_per_s=results[main_case]["ratio_items_per_s"],
         ratio_other_seconds=results[main_case]["ratio_other_seconds"],
         same_items=all(r["same_items"] for r in results.values()),
         same_acc=all(r["same_acc"] for r in results.values()),
         data=fx["source"], model={"hidden": args.hidden, "layers": args.layers, "vocab": fx["vocab"]},
         repeats=args.repeats, threads=args.threads,
         cases={c: {k: v for k, v in res.items() if k != "rows"} for c, res in results.items()})


if __name__ == "__main__":
    main()
