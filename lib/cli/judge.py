"""The pairwise LLM judge from the command line: python -m lib.cli.judge --params params/toy.yaml ... (see lib.eval.judge).

Every failure (bad flags, an endpoint that is down or answers nonsense, too many unparsed replies)
ends in one ``error:`` line through :mod:`lib.cli.errors`; the verdicts judged so far stay in
``--out`` and a rerun goes on from them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from lib.cli.errors import exit_quietly, failed
from lib.core.io import write_json, write_text
from lib.core.params import ParamsError
from lib.eval.judge import __doc__ as USAGE
from lib.eval.judge import (JudgeError, answer_items, judge_items, make_client, read_items, settings, tally,
                            value_problem)
from lib.run.failures import interruptible


INTERRUPTED = "interrupted; the verdicts judged so far are in --out, and the same command goes on from them"
FLAGS = ("base_url", "model", "api_key_env", "timeout", "max_retries", "max_wait", "max_unparsed")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with interruptible():               # Ctrl-C / SIGTERM: one line, exit 130 / 143
        try:
            return items(args[1:]) if args[:1] == ["items"] else verdicts(args)
        except (ParamsError, JudgeError, ValueError, OSError, KeyboardInterrupt) as e:
            return failed(e, INTERRUPTED)


def items(args: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.judge items")
    ap.add_argument("--a", required=True, help="model folder or Hub id (the one whose win rate is reported)")
    ap.add_argument("--b", required=True, help="the model it is compared with")
    ap.add_argument("--prompts", required=True, help="instruction JSON/JSONL (as 06 reads)")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(args)
    if a.n < 1 or a.max_new_tokens < 1:
        raise ParamsError(f"--n and --max-new-tokens must be >= 1, got {a.n}, {a.max_new_tokens}")
    rows = answer_items(a.a, a.b, a.prompts, a.n, a.max_new_tokens)
    write_text(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} items -> {a.out}")
    return 0


def verdicts(args: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli.judge", description=USAGE.split("\n")[0])
    ap.add_argument("items", help="JSONL with id, prompt, a, b")
    ap.add_argument("--params", help="a profile whose judge: section gives the settings below")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", help="name of the environment variable holding the key")
    ap.add_argument("--timeout", type=float, help="seconds one try may take")
    ap.add_argument("--max-retries", type=int)
    ap.add_argument("--max-wait", type=float, help="seconds one request may take with its retries (default 60)")
    ap.add_argument("--max-unparsed", type=float, help="share of items whose reply names no verdict above "
                    "which the tally fails (default 0.1)")
    ap.add_argument("--out", required=True, help="per-item verdicts (JSONL, appended as judged; a rerun goes "
                    "on from it); the tally goes next to it")
    a = ap.parse_args(args)
    st = settings(a.params)
    given = {k: getattr(a, k) for k in FLAGS if getattr(a, k) is not None}
    problems = [f"--{k.replace('_', '-')}: {msg}" for k, v in given.items() if (msg := value_problem(k, v))]
    if problems:
        raise ParamsError.of(problems)
    st.update(given)
    client = make_client(st["base_url"], st["api_key_env"], st["timeout"], st["max_retries"], st["max_wait"])
    rows = judge_items(client, st["model"], read_items(a.items), out=a.out)
    t = tally(rows, n_boot=st["n_boot"], max_unparsed=st["max_unparsed"])
    write_json(Path(a.out).with_suffix(".tally.json"), t)
    print(json.dumps(t))
    return 0


if __name__ == "__main__":
    exit_quietly(main())
