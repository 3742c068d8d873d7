"""Packing efficiency: the non-pad share of our stage-3 data path vs naive padding, on the same text.

    .venv/bin/python bench/packing.py            # real Ko/En text from ../shared/data if present, else the toy world
    .venv/bin/python bench/packing.py --toy      # the generated toy world (as stage 05 of params/toy.yaml)
    .venv/bin/python bench/packing.py --quick    # first 300 lines of each file: a smoke test

"Ours" is what stage 05 (``lib.train.pretrain``) does: ``tokenize_lines`` (``[BOS] ids [EOS]`` per
line), ``pack`` into full ``block_size`` blocks, batches from ``MixedStream``; its non-pad share is
measured on the stream's own batches over one pass. The baselines put one line per row:

- ``pad_longest``: batches of ``--batch-size`` lines in file order, each padded to its longest line
  (a dynamic-padding collator), lines truncated to ``block_size``;
- ``pad_sorted``: the same with lines sorted by length first, the best any length grouping can do;
- ``pad_block``: every row padded to ``block_size`` (``lib.data.packing.pad_naive``).

Compute is counted in positions (rows x width; attention's extra cost on long rows is left out):
``compute_per_token`` is positions per trained token, so ``x vs packed`` is how many times more
forward/backward work the baseline spends for the same number of trained tokens, and ``steps`` is
the optimizer steps of one pass at ``--batch-size`` rows. What each layout loses: packing drops the
tail of the file (fewer than ``block_size`` tokens); one-line rows truncate lines longer than a block.

Real data (``../shared/data``, see its README): every file of ``mono/ko`` and ``mono/en``, with the
Llama-2 tokenizer before the merge and the merged Llama-2 + KoBERT one (``merge_mode: all``, what
stage 05 sees after stage 01), at blocks of 512 and 2048 (stage 05 of ``params/a6000.yaml``), 32 rows
per step. Toy data: ``data/stage3_{ko,en}.txt`` of the default toy world with its base and merged
tokenizers, at blocks of 64 (micro) and 128 (toy), 16 rows per step.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from common import emit, table

from lib.core.paths import SHARED_DATA as SHARED

# ----------------------------------------------------------------------------- layouts

def packed(docs: list[list[int]], block_size: int, batch_size: int) -> dict:
    """Stage 05's layout, measured on the MixedStream batches of one pass over the blocks."""
    from lib.data.packing import MixedStream, nonpad_fraction, pack, packing_report
    rep = packing_report(docs, block_size)
    if rep["blocks"] == 0:
        return {"rows": 0, "positions": 0, "trained": 0, "lost": rep["tokens"], "nonpad_share": float("nan")}
    stream = MixedStream({"text": pack(docs, block_size)}, batch_size=batch_size, seed=0)
    steps = math.ceil(rep["blocks"] / batch_size)
    masks = [stream.batch(s)["attention_mask"] for s in range(steps)]
    share = float(np.mean([nonpad_fraction(m) for m in masks]))   # equal-size batches: mean of shares
    return {"rows": rep["blocks"], "positions": rep["blocks"] * block_size, "trained": rep["blocks"] * block_size,
            "lost": rep["dropped_tokens"], "nonpad_share": share}


def padded_to_longest(lengths: np.ndarray, block_size: int, batch_size: int) -> dict:
    """One line per row, each batch padded to its longest (truncated) line."""
    kept = np.minimum(lengths, block_size)
    widths = [int(kept[i:i + batch_size].max()) for i in range(0, len(kept), batch_size)]
    sizes = [len(kept[i:i + batch_size]) for i in range(0, len(kept), batch_size)]
    positions = sum(w * n for w, n in zip(widths, sizes))
    return {"rows": len(kept), "positions": positions, "trained": int(kept.sum()),
            "lost": int(lengths.sum() - kept.sum()), "nonpad_share": kept.sum() / positions}


def padded_to_block(docs: list[list[int]], block_size: int) -> dict:
    from lib.data.packing import nonpad_fraction, pad_naive
    mask = pad_naive(docs, block_size)["attention_mask"]
    trained = int(mask.sum())
    return {"rows": len(docs), "positions": mask.numel(), "trained": trained,
            "lost": sum(len(d) for d in docs) - trained, "nonpad_share": nonpad_fraction(mask)}


LAYOUTS = ("packed", "pad_longest", "pad_sorted", "pad_block")


def layouts(docs: list[list[int]], block_size: int, batch_size: int) -> dict[str, dict]:
    lengths = np.array([len(d) for d in docs])
    out = {"packed": packed(docs, block_size, batch_size),
           "pad_longest": padded_to_longest(lengths, block_size, batch_size),
           "pad_sorted": padded_to_longest(np.sort(lengths), block_size, batch_size),
           "pad_block": padded_to_block(docs, block_size)}
    for r in out.values():
        r["steps"] = math.ceil(r["rows"] / batch_size)
        r["compute_per_token"] = r["positions"] / r["trained"] if r["trained"] else float("nan")
    base = out["packed"]["compute_per_token"]
    for r in out.values():
        r["x_vs_packed"] = r["compute_per_token"] / base
    return out


# ----------------------------------------------------------------------------- data

def real_data(tmp: Path, limit: int | None) -> tuple[dict, dict, dict]:
    """({name: lines}, {tokenizer name: tokenizer}, about) from ../shared/data."""
    from lib.core.readers import read_lines
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model, merge_sp
    texts = {f"{p.parent.name}/{p.stem}": read_lines(p, limit=limit)
             for lang in ("ko", "en") for p in sorted((SHARED / "mono" / lang).glob("*.txt"))}
    base = load_sp_model(SHARED / "tokenizers/llama2/tokenizer.model")
    merged, _ = merge_sp(base, load_sp_model(SHARED / "tokenizers/kobert/tokenizer.model"), mode="all")
    toks = {"llama2": hf_tokenizer_from_sp(base), "llama2+kobert": hf_tokenizer_from_sp(merged)}
    return texts, toks, {"data": str(SHARED / "mono"), "block_sizes": (512, 2048), "batch_size": 32}


def toy_data(tmp: Path, limit: int | None) -> tuple[dict, dict, dict]:
    """The same from a freshly generated default toy world (deterministic) and its tokenizers."""
    from lib.vocab.merge import hf_tokenizer_from_sp, load_sp_model, merge_sp
    from lib.world import WorldSpec, build_world, write_world
    from lib.world.basemodel import train_base_tokenizer, train_korean_tokenizer
    write_world(build_world(WorldSpec()), tmp)
    base = load_sp_model(train_base_tokenizer(tmp, tmp / "base")["path"])
    merged, _ = merge_sp(base, load_sp_model(train_korean_tokenizer(tmp, tmp / "ko")["path"]), mode="all")
    from lib.core.readers import read_lines
    texts = {f"toy/stage3_{lang}": read_lines(tmp / f"data/stage3_{lang}.txt", limit=limit) for lang in ("ko", "en")}
    toks = {"toy base": hf_tokenizer_from_sp(base), "toy merged": hf_tokenizer_from_sp(merged)}
    return texts, toks, {"data": "toy world (WorldSpec())", "block_sizes": (64, 128), "batch_size": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", action="store_true", help="use the toy world even if ../shared/data is present")
    ap.add_argument("--block-sizes", default=None, help="comma list (default: 512,2048 real; 64,128 toy)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default: 32 real; 16 toy)")
    ap.add_argument("--limit", type=int, default=None, help="lines per file")
    ap.add_argument("--quick", action="store_true", help="300 lines per file")
    args = ap.parse_args()
    limit = 300 if args.quick and not args.limit else args.limit
    use_real = SHARED.exists() and not args.toy
    from lib.data.packing import tokenize_lines
    with tempfile.TemporaryDirectory() as tmp:
        texts, toks, about = (real_data if use_real else toy_data)(Path(tmp), limit)
    blocks = [int(b) for b in args.block_sizes.split(",")] if args.block_sizes else list(about["block_sizes"])
    batch_size = args.batch_size or about["batch_size"]

    results, shares, work = [], [], []
    for tname, tok in toks.items():
        for name, lines in texts.items():
            docs = tokenize_lines(tok, lines)
            lengths = np.array([len(d) for d in docs])
            for bs in blocks:
                lay = layouts(docs, bs, batch_size)
                info = {"text": name, "tokenizer": tname, "block": bs, "lines": len(docs),
                        "tokens": int(lengths.sum()), "median_len": int(np.median(lengths)),
                        "over_block": float((lengths > bs).mean())}
                results.append({**info, "layouts": lay})
                shares.append({**info, **{k: lay[k]["nonpad_share"] for k in LAYOUTS},
                               "lost_packed": lay["packed"]["lost"] / info["tokens"],
                               "lost_one_per_row": lay["pad_block"]["lost"] / info["tokens"]})
                work.append({"text": name, "tokenizer": tname, "block": bs,
                             **{f"steps {k}": lay[k]["steps"] for k in LAYOUTS},
                             **{f"x {k}": lay[k]["x_vs_packed"] for k in LAYOUTS[1:]}})

    print(f"\ndata: {about['data']}; batch size {batch_size}; block sizes {blocks}\n")
    print("Non-pad share of the positions computed (1.0: no padding), and tokens lost (share of all):\n")
    print(table(shares, ["text", "tokenizer", "block", "lines", "tokens", "median_len", "over_block", *LAYOUTS,
                         "lost_packed", "lost_one_per_row"]))
    print("\nOptimizer steps for one pass, and compute per trained token vs packed (x: times the positions):\n")
    print(table(work))
    summary = {lay: {"min": min(s[lay] for s in shares), "max": max(s[lay] for s in shares)} for lay in LAYOUTS}
    emit("packing", baseline="packed (lib.data.packing, stage 05)", data=about["data"], real_data=use_real,
         batch_size=batch_size, block_sizes=blocks, nonpad_share=summary, results=results)


if __name__ == "__main__":
    main()
