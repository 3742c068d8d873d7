"""Word pairs from a parallel corpus: python -m lib.cli.wordpairs KO EN OUT.jsonl (see lib.data.wordpairs)."""
from __future__ import annotations

import argparse

from lib.core.readers import read_parallel
from lib.data.wordpairs import __doc__ as USAGE
from lib.data.wordpairs import extract, write_pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.wordpairs", description=USAGE.split("\n\n")[0])
    ap.add_argument("ko", help="Korean side of a parallel corpus, one sentence a line")
    ap.add_argument("en", help="English side, line-aligned")
    ap.add_argument("-o", "--out", required=True, help="word-pair JSONL to write")
    ap.add_argument("--min-count", type=int, default=3)
    ap.add_argument("--min-dice", type=float, default=0.3)
    ap.add_argument("--max-pairs", type=int, default=0, help="keep the best N (0: all)")
    a = ap.parse_args(argv)
    ko, en = read_parallel(a.ko, a.en)
    pairs, scores = extract(ko, en, a.min_count, a.min_dice, a.max_pairs)
    if not pairs:
        raise SystemExit(f"no word pair reached --min-count {a.min_count} and --min-dice {a.min_dice} "
                         f"in {len(ko)} sentence pairs; lower them or give a larger corpus")
    write_pairs(a.out, pairs, scores)
    print(f"{len(pairs)} word pairs from {len(ko)} sentence pairs -> {a.out}")
    for (w, s), sc in list(zip(pairs, scores))[:10]:
        print(f"  {w:<16} {s:<10} dice {sc['dice']:.2f}  (en {sc['count_en']}, ko {sc['count_ko']}, both {sc['count_both']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
