"""Null controls on the real paired tasks (issue 28): what question-blind predictors reach, and
which prediction rule removes what a model that cannot read the question gets from them.

    .venv/bin/python bench/null_controls.py                      # ARC + Belebele, 200 items each, ~3-6 min on 2 cores
    .venv/bin/python bench/null_controls.py --limit 100 --models llama
    .venv/bin/python bench/null_controls.py --toy outputs/toy    # adds the toy base model (00's model/)

1. **Model-free**, on every pair of ``../shared/data/bench`` (ARC-Challenge 1,172, Belebele 900):
   the shortest and the longest option in characters, per language; accuracy, agreement and kappa
   with bootstrap 95% intervals.
2. **Null models**: the rehearsal's stand-ins (``lib.run.rehearsal``: a random 2-layer Llama with the
   real Llama-2 tokenizer, a random GPT-NeoX with its own BPE), and with ``--toy`` the toy base
   model, which never saw real English or Korean. None of them can read the question, so every
   agreement they show is question-blind. Each is scored by 07's own path
   (:func:`lib.eval.harness.evaluate_all`, the first ``--limit`` items of each pair) and read by 08's
   (:func:`lib.analysis.paired.paired_rows`, :mod:`lib.eval.nullcontrols`) under every rule: accuracy, agreement,
   kappa, and the beyond-null kappa. The rule to use is the one under which these read kappa ~0.

Writes ``outputs/bench_null_controls/`` (07's results, ``null_controls.md``) and prints the tables
and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lib.analysis import paired as an  # noqa: E402
from lib.core import (
    markdown,  # noqa: E402
    paths,
    stats,  # noqa: E402
)
from lib.eval import harness as E  # noqa: E402
from lib.eval import nullcontrols as nc  # noqa: E402
from lib.eval import rules  # noqa: E402
from lib.eval import tasks as ET  # noqa: E402

PAIRS = {"arc_challenge": ("arc_challenge/en_test.jsonl", "arc_challenge/ko_test.jsonl", "arc"),
         "belebele": ("belebele/eng_Latn.jsonl", "belebele/kor_Hang.jsonl", "belebele")}


def pair_specs(shared: Path) -> dict[str, dict]:
    b = shared / "bench"
    return {name: {"en": str(b / en), "ko": str(b / ko), "format": fmt} for name, (en, ko, fmt) in PAIRS.items()}


def model_free(pairs: dict[str, ET.Pair], n_boot: int) -> list[dict]:
    rows = []
    for name, p in pairs.items():
        for c in nc.MODEL_FREE:
            its = []
            for en, ko in zip(p.records["en"], p.records["ko"]):
                e, k = (rules.null_choices(p.shape.choices(r, lang))[c] for r, lang in ((en, "en"), (ko, "ko")))
                its.append(stats.Item(en["id"], p.shape.gold(en), e, k))
            m = stats.paired_metrics(its, n_boot=n_boot)
            rows.append({"task": name, "control": c, "n": m["n"], **{k: m[k] for k in stats.CI_METRICS},
                         **{f"{k}_ci": m[f"{k}_ci"] for k in stats.CI_METRICS}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="items per pair scored by the null models (0: all)")
    ap.add_argument("--models", default="llama,neox", help="rehearsal stand-ins to score (llama, neox; '' for none)")
    ap.add_argument("--toy", default="", help="a toy run folder: also score its 00 base model")
    ap.add_argument("--out", default=str(paths.OUTPUTS / "bench_null_controls"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    out = Path(args.out)
    pairs = ET.write_tasks(pair_specs(paths.SHARED_DATA), out / "07" / "tasks")   # where 07 looks
    free = model_free(pairs, args.n_boot)
    models = []
    wanted = [m for m in args.models.split(",") if m]
    if wanted:
        from lib.run.rehearsal import build_assets
        assets = build_assets(out / "assets")
        models += [E.ModelSpec(f"random-{m}", "baseline", None, None, str(assets / m)) for m in wanted]
    if args.toy:
        models.append(E.ModelSpec("toy-base", "baseline", None, None,
                                  str(Path(args.toy).resolve() / "00_toy_world" / "model")))
    t0 = time.time()
    manifest = E.evaluate_all(models, pairs, out / "07", limit=args.limit, batch_size=args.batch_size,
                              device="cpu", rescore_changed=True) if models else []
    manifest = [{**e, "run": "bench", "run_dir": str(out)} for e in manifest]
    items = an.load_items(manifest)
    paired = an.paired_rows(manifest, "auto", n_boot=args.n_boot, items=items, check_reported=False)
    controls = nc.control_rows(paired, items, n_boot=args.n_boot)
    beyond = nc.beyond_rows(paired, nc.load_vectors(manifest), n_boot=args.n_boot)
    md = ("## Model-free length controls (all items)\n\n" + markdown.to_markdown(
        [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in free])
        + f"\n## Null models, first {args.limit or 'all'} items per pair: every rule\n\n"
        + nc.rules_markdown(beyond, controls) + "\n" + nc.controls_markdown(controls, beyond))
    (out / "null_controls.md").write_text(md, encoding="utf-8")
    print(md)
    print(json.dumps({"bench": "null_controls", "seconds_models": round(time.time() - t0, 1),
                      "rules": {name: p.rule for name, p in pairs.items()},
                      "null_kappa": {name: p.null_kappa for name, p in pairs.items()},
                      "model_free": free, "null_models": beyond, "controls": controls}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
