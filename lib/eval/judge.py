"""LLM judge: pairwise comparison of two models' answers through any OpenAI-compatible chat endpoint.

Each item (``id``, ``prompt``, ``a``, ``b``: the two models' answers to the same prompt) is judged
twice, once with ``a`` shown first and once with ``b`` first, to cancel position bias. An item is
a *win* for ``a`` when ``a`` is preferred in both orders (or in one, the other a tie), a *loss*
when ``b`` is, else a *tie*. The tally gives win/tie/loss shares with bootstrap 95% intervals;
every verdict is logged per item.

    # the two models' answers to the same prompts (greedy, 06's chat template), then the verdicts
    python -m lib.cli.judge items --a outputs/toy/05_stage3_pretrain/model \\
        --b outputs/toy/06_instruction_tuning/model --prompts outputs/toy/00_toy_world/data/instructions.jsonl \\
        --n 50 --out outputs/toy/judge/items.jsonl
    python -m lib.cli.judge outputs/toy/judge/items.jsonl --base-url http://127.0.0.1:8000/v1 --model judge \\
        --api-key-env JUDGE_API_KEY --out outputs/toy/judge/verdicts.jsonl

The key is read from the environment variable named (never from a file in the repository);
errors and timeouts are retried by the ``openai`` client (``max_retries``, ``timeout``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lib.core import params as P
from lib.core.params import SECTIONS
from lib.core.stats import percentile_interval, resamples
from lib.data.instructions import Template, read_records
from lib.modeling.generate import greedy
from lib.modeling.model import load_model

# the ``judge:`` section of a profile: key -> default (declared, keys and types checked, in lib.core.params)
PARAMS = SECTIONS["judge"]


def value_problem(key: str, value) -> str | None:
    """What is wrong with a well-typed value of the ``judge:`` section (None: fine): a timeout
    that is not positive, a negative count, a base URL that is not http(s)."""
    if key == "timeout" and value <= 0 or key in ("max_retries", "n_boot") and value < 0:
        return f"judge.{key} must be {'> 0' if key == 'timeout' else '>= 0'}, got {value!r}"
    if key == "base_url" and not str(value).startswith(("http://", "https://")):
        return f"judge.base_url must start with http:// or https://, got {value!r}"
    return None


def section_problems(section: dict, where) -> list[str]:
    """Every problem of a profile's ``judge:`` section, one line each (``where(key)`` says file:line)."""
    return P.section_problems("judge", section, where, value_problem)


def settings(profile_path: str | None) -> dict:
    """PARAMS overlaid with the ``judge:`` section of a profile (validated)."""
    out = dict(PARAMS)
    if profile_path:
        prof = P.load_profile(profile_path)
        sec = prof.sections.get("judge", {})
        problems = section_problems(sec, lambda k: prof.where("judge", k))
        if problems:
            raise P.ParamsError.of(problems)
        out.update(sec)
    return out


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
    idx = resamples(len(res), n_boot, seed)
    out = {"n": int(len(res))}
    for k in ("win", "tie", "loss"):
        hits = (res == k).astype(float)
        boot = hits[idx].mean(1)
        out[k] = float(hits.mean())
        out[f"{k}_ci"] = percentile_interval(boot, 0.95)
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


def answer_items(model_a: str, model_b: str, prompts: str | Path, n: int, max_new_tokens: int = 48) -> list[dict]:
    """The two models' greedy answers to the first ``n`` instruction records of ``prompts``."""
    recs = [r for r in read_records(prompts) if not r["history"]][:n]
    t = Template()
    answers = []
    for spec in (model_a, model_b):
        model, tok = load_model(spec, "cpu")
        answers.append(greedy(model, tok, [t.generation_prompt(r["instruction"], r["input"]) for r in recs],
                              max_new_tokens))
    return [{"id": i, "lang": r["lang"], "prompt": t.user_text(r["instruction"], r["input"]), "a": a, "b": b}
            for i, (r, a, b) in enumerate(zip(recs, *answers))]
