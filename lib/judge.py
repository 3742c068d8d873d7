"""LLM judge: pairwise comparison of two models' answers through any OpenAI-compatible chat endpoint.

Each item (``id``, ``prompt``, ``a``, ``b``: the two models' answers to the same prompt) is judged
twice, once with ``a`` shown first and once with ``b`` first, to cancel position bias. An item is
a *win* for ``a`` when ``a`` is preferred in both orders (or in one, the other a tie), a *loss*
when ``b`` is, else a *tie*. The tally gives win/tie/loss shares with bootstrap 95% intervals;
every verdict is logged per item.

    python -m lib.judge answers.jsonl --base-url http://127.0.0.1:8000/v1 --model judge \\
        --api-key-env JUDGE_API_KEY --out verdicts.jsonl

The key is read from the environment variable named (never from a file in the repository);
errors and timeouts are retried by the ``openai`` client (``max_retries``, ``timeout``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

SYSTEM = ("You compare two answers to the same question. Reply with exactly one of: "
          "'A' if answer A is better, 'B' if answer B is better, 'tie' if they are equally good.")
_VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def make_client(base_url: str, api_key_env: str, timeout: float = 30.0, max_retries: int = 3):
    from openai import OpenAI
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and key is None:
        raise ValueError(f"judge: the environment variable {api_key_env!r} (api_key_env) is not set")
    return OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=max_retries)


def user_message(prompt: str, first: str, second: str) -> str:
    return f"Question:\n{prompt}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\nWhich is better: A, B or tie?"


def parse_verdict(text: str) -> str:
    """'A', 'B' or 'tie' from the judge's reply (the first such word); anything else is a tie."""
    m = _VERDICT.search(text or "")
    return m.group(1).upper() if m and m.group(1).lower() != "tie" else "tie"


def ask(client, model: str, prompt: str, first: str, second: str) -> tuple[str, str]:
    r = client.chat.completions.create(model=model, temperature=0.0, max_tokens=8, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(prompt, first, second)}])
    text = r.choices[0].message.content or ""
    return parse_verdict(text), text


def combine(ab: str, ba: str) -> str:
    """The item's result for ``a`` from the verdicts with a first (``ab``) and b first (``ba``)."""
    score = {"A": 1, "B": -1, "tie": 0}[ab] - {"A": 1, "B": -1, "tie": 0}[ba]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def judge_items(client, model: str, items: Iterable[dict]) -> list[dict]:
    """One log row per item: both orders' verdicts and raw replies, and the combined result."""
    out = []
    for it in items:
        ab, raw_ab = ask(client, model, it["prompt"], it["a"], it["b"])
        ba, raw_ba = ask(client, model, it["prompt"], it["b"], it["a"])
        out.append({"id": it.get("id", len(out)), "a_first": ab, "b_first": ba,
                    "raw": [raw_ab, raw_ba], "result": combine(ab, ba)})
    return out


def tally(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Win/tie/loss shares of ``a`` with bootstrap 95% intervals (items resampled)."""
    res = np.array([r["result"] for r in rows])
    if not len(res):
        raise ValueError("judge: no items to tally")
    idx = np.random.default_rng(seed).integers(0, len(res), (n_boot, len(res)))
    out = {"n": int(len(res))}
    for k in ("win", "tie", "loss"):
        hits = (res == k).astype(float)
        boot = hits[idx].mean(1)
        out[k] = float(hits.mean())
        out[f"{k}_ci"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
    return out


def read_items(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        missing = [k for k in ("prompt", "a", "b") if not isinstance(rec.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{i}: needs string fields prompt, a, b (missing or not text: {missing})")
        rows.append(rec)
    if not rows:
        raise ValueError(f"{path}: no items")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from lib.outputs import write_json, write_text
    ap = argparse.ArgumentParser(prog="python -m lib.judge", description=__doc__.split("\n")[0])
    ap.add_argument("items", help="JSONL with id, prompt, a, b")
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key-env", default="", help="name of the environment variable holding the key")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--max-retries", type=int, default=3)
    ap.add_argument("--out", required=True, help="per-item verdicts (JSONL); the tally goes next to it")
    a = ap.parse_args(argv)
    client = make_client(a.base_url, a.api_key_env, a.timeout, a.max_retries)
    rows = judge_items(client, a.model, read_items(a.items))
    out = Path(a.out)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    t = tally(rows)
    write_json(out.with_suffix(".tally.json"), t)
    print(json.dumps(t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
