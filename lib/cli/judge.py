"""The pairwise LLM judge from the command line: python -m lib.cli.judge --params params/toy.yaml ... (see lib.eval.judge)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from lib.core.io import write_json, write_text
from lib.eval.judge import __doc__ as USAGE
from lib.eval.judge import answer_items, judge_items, make_client, read_items, settings, tally


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else None
    import sys
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["items"]:
        ap = argparse.ArgumentParser(prog="python -m lib.cli.judge items")
        ap.add_argument("--a", required=True, help="model folder or Hub id (the one whose win rate is reported)")
        ap.add_argument("--b", required=True, help="the model it is compared with")
        ap.add_argument("--prompts", required=True, help="instruction JSON/JSONL (as 06 reads)")
        ap.add_argument("--n", type=int, default=50)
        ap.add_argument("--max-new-tokens", type=int, default=48)
        ap.add_argument("--out", required=True)
        a = ap.parse_args(args[1:])
        rows = answer_items(a.a, a.b, a.prompts, a.n, a.max_new_tokens)
        write_text(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{len(rows)} items -> {a.out}")
        return 0
    argv = args
    ap = argparse.ArgumentParser(prog="python -m lib.cli.judge", description=USAGE.split("\n")[0])
    ap.add_argument("items", help="JSONL with id, prompt, a, b")
    ap.add_argument("--params", help="a profile whose judge: section gives the settings below")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", help="name of the environment variable holding the key")
    ap.add_argument("--timeout", type=float)
    ap.add_argument("--max-retries", type=int)
    ap.add_argument("--out", required=True, help="per-item verdicts (JSONL); the tally goes next to it")
    a = ap.parse_args(argv)
    st = settings(a.params)
    st.update({k: v for k, v in (("base_url", a.base_url), ("model", a.model), ("api_key_env", a.api_key_env),
                                 ("timeout", a.timeout), ("max_retries", a.max_retries)) if v is not None})
    client = make_client(st["base_url"], st["api_key_env"], st["timeout"], st["max_retries"])
    rows = judge_items(client, st["model"], read_items(a.items))
    out = Path(a.out)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    t = tally(rows, n_boot=st["n_boot"])
    write_json(out.with_suffix(".tally.json"), t)
    print(json.dumps(t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
