"""Encode throughput of the merged tokenizer (Llama-2 + KoBERT, as stage 01 builds it) against the base Llama-2 one.

    .venv/bin/python bench/tokenizer.py --quick          # 200 lines per file, ~30 s
    .venv/bin/python bench/tokenizer.py                  # every line of the real text, ~1.5 min
    .venv/bin/python bench/tokenizer.py --mode hangul    # the Hangul-only merge

The merged tokenizer is built as notebook 01 does: ``load_sp_model`` of both SentencePiece models,
``merge_sp(base, korean, mode)``, and the transformers tokenizer of each model from
``hf_tokenizer_from_sp`` (never ``AutoTokenizer`` on a bare ``tokenizer.model``). Text: the real
Korean (KLUE sentences, KorQuAD paragraphs, news) and English (MLQA and XQuAD paragraphs, news)
of ../shared/data, lines stripped (sentencepiece and transformers differ on a leading space);
without that folder, the toy world's tokenizers and text (a note says so).

Each tokenizer encodes each language's lines as one batch, three ways:
- ``hf``: ``tok(lines, add_special_tokens=False)["input_ids"]``, the call lib.vocab.merge makes;
- ``hf_rust``: ``tok.backend_tokenizer.encode_batch(lines, add_special_tokens=False)``, the Rust
  tokenizer alone (the difference to ``hf`` is transformers' Python conversion);
- ``sp``: ``SentencePieceProcessor.encode(lines)``, sentencepiece's own batch encode.
Both libraries spread a batch over the cores. BOS is never counted. Each figure is the fastest
of ``--repeats`` rounds (every encoder once per round, after one warm-up). ``speed_vs_base``:
chars/s of this tokenizer over the base tokenizer's with the same backend on the same text;
``same_as_sp``: lines whose ids equal sentencepiece's.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import REPO, Timer, emit, table

SHARED = REPO.parent / "shared" / "data"
TEXT = {"ko": ("mono/ko/klue_sentences.txt", "mono/ko/korquad_contexts.txt", "parallel/news_dev.ko"),
        "en": ("mono/en/mlqa_contexts.txt", "mono/en/xquad_contexts.txt", "parallel/news_dev.en")}
BACKENDS = ("hf", "hf_rust", "sp")


def read_text(files: list[Path], limit: int) -> list[str]:
    """Stripped non-empty lines, the first ``limit`` of each file (0: all)."""
    from lib.core.readers import read_lines
    return [s.strip() for f in files for s in read_lines(f, limit=limit or None)]


def sources(data: str, root: Path) -> dict:
    """SentencePiece files and text: the real ones, or the toy world's."""
    if data == "shared" or (data == "auto" and (SHARED / "tokenizers").is_dir()):
        return {"base": SHARED / "tokenizers/llama2/tokenizer.model",
                "korean": SHARED / "tokenizers/kobert/tokenizer.model",
                "text": {lang: [SHARED / f for f in files] for lang, files in TEXT.items()},
                "source": "shared: Llama-2 + KoBERT, KLUE/KorQuAD/news (ko), MLQA/XQuAD/news (en)"}
    why = "--data toy" if data == "toy" else f"{SHARED} is absent"
    print(f"note: {why}: the toy world's tokenizers and text instead of Llama-2, KoBERT and real text")
    from lib.world import WorldSpec, build_world, write_world
    from lib.world.basemodel import train_base_tokenizer, train_korean_tokenizer
    world = root / "world"
    write_world(build_world(WorldSpec()), world)
    return {"base": Path(train_base_tokenizer(world, root / "base")["path"]),
            "korean": Path(train_korean_tokenizer(world, root / "korean")["path"]),
            "text": {"ko": [world / "data/sample.ko", world / "data/ko_mono.txt"],
                     "en": [world / "data/sample.en", world / "data/en_pretrain.txt"]},
            "source": "toy world: toy base BPE + toy Korean unigram, toy text"}


def encoder(tok, sp, backend: str):
    """A function lines -> token ids (BOS excluded) for one backend."""
    if backend == "hf":
        return lambda lines: tok(lines, add_special_tokens=False)["input_ids"]
    if backend == "hf_rust":
        rust = tok.backend_tokenizer
        return lambda lines: [e.ids for e in rust.encode_batch(lines, add_special_tokens=False)]
    return lambda lines: sp.encode(lines)


def measure(encoders: dict, lines: list[str], repeats: int) -> tuple[dict, dict]:
    """Fastest of ``repeats`` timed batch encodes per encoder, after one warm-up each, and the ids.
    The encoders take turns in every round, so a burst of load on a shared machine hits all alike."""
    ids = {key: enc(lines) for key, enc in encoders.items()}
    best = dict.fromkeys(encoders, float("inf"))
    for _ in range(repeats):
        for key, enc in encoders.items():
            with Timer() as t:
                enc(lines)
            best[key] = min(best[key], t.seconds)
    return best, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (~30 s): --limit 200, 1 repeat")
    ap.add_argument("--limit", type=int, default=0, help="lines read from each text file (0: all)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; the fastest run of each encoder counts")
    ap.add_argument("--mode", choices=("all", "hangul"), default="all", help="merge_sp mode (stage 01's merge_mode)")
    ap.add_argument("--data", choices=("auto", "shared", "toy"), default="auto",
                    help="auto: ../shared/data when present, else the toy world")
    args = ap.parse_args()
    if args.quick:
        args.limit, args.repeats = 200, 1

    import sentencepiece as spm

    from lib.vocab import merge as T
    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tmp:
        src = sources(args.data, Path(tmp))
        base_sp, korean_sp = T.load_sp_model(src["base"]), T.load_sp_model(src["korean"])
        merged_sp, info = T.merge_sp(base_sp, korean_sp, mode=args.mode)
        text = {lang: read_text(files, args.limit) for lang, files in src["text"].items()}
    with Timer() as t_build:
        toks = {"base": T.hf_tokenizer_from_sp(base_sp), "merged": T.hf_tokenizer_from_sp(merged_sp)}
    sps = {"base": spm.SentencePieceProcessor(model_proto=base_sp.SerializeToString()),
           "merged": spm.SentencePieceProcessor(model_proto=merged_sp.SerializeToString())}
    print(f"data: {src['source']}; merge_mode {args.mode}: {info['base_size']:,} + {info['added']:,} = "
          f"{info['merged_size']:,} pieces; transformers tokenizers built in {t_build.seconds:.1f} s; "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")

    rows = []
    for lang, lines in text.items():
        chars = sum(len(s) for s in lines)
        encoders = {(name, b): encoder(toks[name], sps[name], b) for name in ("base", "merged") for b in BACKENDS}
        seconds, ids = measure(encoders, lines, args.repeats)
        for (name, backend), secs in seconds.items():
            tokens = sum(len(x) for x in ids[(name, backend)])
            rows.append({"lang": lang, "tokenizer": name, "backend": backend, "lines": len(lines),
                         "chars": chars, "tokens": tokens, "seconds": secs,
                         "lines/s": len(lines) / secs, "chars/s": chars / secs,
                         "tokens/s": tokens / secs, "tokens/char": tokens / chars,
                         "same_as_sp": sum(a == b for a, b in zip(ids[(name, backend)], ids[(name, "sp")]))})
    rows.sort(key=lambda r: (r["lang"] != "ko", r["backend"] != "hf", r["backend"], r["tokenizer"]))
    speed = {(r["lang"], r["backend"], r["tokenizer"]): r["chars/s"] for r in rows}
    for r in rows:
        r["speed_vs_base"] = r["chars/s"] / speed[(r["lang"], r["backend"], "base")]
    cols = ["lang", "tokenizer", "backend", "lines", "chars", "tokens", "tokens/char", "seconds",
            "lines/s", "chars/s", "tokens/s", "speed_vs_base", "same_as_sp"]
    print()
    print(table(rows, cols))
    print()
    tpc = {(r["lang"], r["tokenizer"]): r["tokens/char"] for r in rows}
    for lang in text:
        print(f"{lang}: tokens/char {tpc[(lang, 'base')]:.3f} -> {tpc[(lang, 'merged')]:.3f} "
              f"({tpc[(lang, 'merged')] / tpc[(lang, 'base')]:.2f}x); merged/base chars/s: "
              + ", ".join(f"{b} {speed[(lang, b, 'merged')] / speed[(lang, b, 'base')]:.2f}" for b in BACKENDS)
              + f"; merged sp/hf chars/s: {speed[(lang, 'sp', 'merged')] / speed[(lang, 'hf', 'merged')]:.2f}")
    emit("tokenizer", baseline="base Llama-2 tokenizer, same backend, same text", data=src["source"],
         merge_mode=args.mode, limit=args.limit, repeats=args.repeats,
         merge_info={k: v for k, v in info.items() if k != "unreachable_examples"},
         speed_vs_base={f"{lang}_{b}": speed[(lang, b, "merged")] / speed[(lang, b, "base")]
                        for lang in text for b in BACKENDS},
         tokens_per_char={f"{lang}_{name}": tpc[(lang, name)] for lang in text for name in ("base", "merged")},
         rows=[{k.replace("/", "_per_"): v for k, v in r.items()} for r in rows])


if __name__ == "__main__":
    main()
