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

The key is read from the environment variable named (never from a file in the repository).
A request that fails (connection refused, a timeout, HTTP 429/5xx) is retried up to ``max_retries``
times, each try waiting at most ``timeout`` s and all of them together at most ``max_wait`` s (a
dead endpoint fails in ``max_wait`` s, 60 by default); anything else the endpoint answers (another
status, a body without ``choices``) is a :class:`JudgeError` at once. Each verdict is appended to
``--out`` as it is judged, and a rerun with the same ``--out`` judges only the items not there yet.
A reply that names no verdict is counted as ``unparsed``, apart from ties; the tally fails when
more than ``max_unparsed`` (10% by default) of the items are.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import openai

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
    if key in ("timeout", "max_wait") and not value > 0 or key in ("max_retries", "n_boot") and value < 0:
        return f"judge.{key} must be {'> 0' if key in ('timeout', 'max_wait') else '>= 0'}, got {value!r}"
    if key == "max_unparsed" and not 0 <= value <= 1:
        return f"judge.max_unparsed must be a share between 0 and 1, got {value!r}"
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


class JudgeError(RuntimeError):
    """The endpoint cannot be used: unreachable, an error status, a reply that is not a completion."""


@dataclass
class Client:
    """An OpenAI-compatible client (its own retries off) and the retry budget :func:`ask` applies."""
    api: openai.OpenAI
    base_url: str
    timeout: float
    max_retries: int
    max_wait: float


def make_client(base_url: str, api_key_env: str, timeout: float = 30.0, max_retries: int = 3,
                max_wait: float = 60.0) -> Client:
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and key is None:
        raise ValueError(f"judge: the environment variable {api_key_env!r} (api_key_env) is not set")
    return Client(openai.OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=0),
                  base_url, timeout, max_retries, max_wait)


def _retryable(e: Exception) -> bool:
    return (isinstance(e, (openai.APIConnectionError, openai.APITimeoutError))
            or isinstance(e, openai.APIStatusError) and (e.status_code == 429 or e.status_code >= 500))


def complete(client: Client, **request) -> str:
    """The reply's text; retried within the client's budget, else one :class:`JudgeError`."""
    start, tries = time.monotonic(), 0
    while True:
        left = client.max_wait - (time.monotonic() - start)
        try:
            r = client.api.chat.completions.create(timeout=max(0.01, min(client.timeout, left)), **request)
            text = r.choices[0].message.content
            if text is not None and not isinstance(text, str):
                raise TypeError(type(text).__name__)
            return text or ""
        except openai.APIError as e:
            tries += 1
            waited = time.monotonic() - start
            if _retryable(e) and tries <= client.max_retries and waited + 0.5 < client.max_wait:
                time.sleep(min(0.5 * 2 ** (tries - 1), client.max_wait - waited - 0.5))
                continue
            what = (f"HTTP {e.status_code}" if isinstance(e, openai.APIStatusError)
                    else "timed out" if isinstance(e, openai.APITimeoutError) else "unreachable")
            raise JudgeError(f"judge endpoint {client.base_url}: {what} after {tries} tr{'y' if tries == 1 else 'ies'} "
                             f"in {waited:.1f}s ({' '.join(str(e).split())[:200]}); check --base-url and that "
                             "the server runs") from None
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:   # ValueError: not JSON
            raise JudgeError(f"judge endpoint {client.base_url}: the reply is not a chat completion with "
                             f"choices[0].message.content ({type(e).__name__}: {e}); is it an OpenAI-compatible "
                             "/v1 endpoint?") from None


def user_message(prompt: str, first: str, second: str) -> str:
    return f"Question:\n{prompt}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\nWhich is better: A, B or tie?"


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply (the first such word); None when it names none."""
    m = _VERDICT.search(text or "")
    return None if m is None else m.group(1).upper() if m.group(1).lower() != "tie" else "tie"


def ask(client: Client, model: str, prompt: str, first: str, second: str) -> tuple[str | None, str]:
    text = complete(client, model=model, temperature=0.0, max_tokens=8, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(prompt, first, second)}])
    return parse_verdict(text), text


def combine(ab: str | None, ba: str | None) -> str:
    """The item's result for ``a`` from the verdicts with a first (``ab``) and b first (``ba``);
    ``unparsed`` when either reply named no verdict."""
    if ab is None or ba is None:
        return "unparsed"
    score = {"A": 1, "B": -1, "tie": 0}[ab] - {"A": 1, "B": -1, "tie": 0}[ba]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def item_key(it: dict) -> str:
    return hashlib.sha256(json.dumps([it["prompt"], it["a"], it["b"]]).encode()).hexdigest()[:16]


def judged(out: Path) -> list[dict]:
    """The verdicts already in ``out`` (a last line cut by a kill is dropped from the file)."""
    if not out.exists():
        return []
    text = out.read_text(encoding="utf-8")
    rows = []
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if line.endswith("\n"):
                raise JudgeError(f"{out}:{i}: not a verdict row; give another --out") from None
            with open(out, "r+", encoding="utf-8") as f:       # cut short by a kill: judge it again
                f.truncate(len(text.encode("utf-8")) - len(line.encode("utf-8")))
    return rows


def judge_items(client: Client, model: str, items: Iterable[dict], out: str | Path | None = None) -> list[dict]:
    """One log row per item: both orders' verdicts and raw replies, and the combined result. With
    ``out``, each row is appended there as it is judged and the items already there are skipped."""
    items = list(items)
    done = {}
    if out is not None:
        out = Path(out)
        done = {r.get("id"): r for r in judged(out)}
        out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, it in enumerate(items):
        iid, key = it.get("id", n), item_key(it)
        if iid in done:
            if done[iid].get("key") != key:
                raise JudgeError(f"{out} holds a verdict for item {iid!r} of other items (prompt or answers "
                                 "differ); give another --out")
            rows.append(done[iid])
            continue
        ab, raw_ab = ask(client, model, it["prompt"], it["a"], it["b"])
        ba, raw_ba = ask(client, model, it["prompt"], it["b"], it["a"])
        row = {"id": iid, "key": key, "a_first": ab, "b_first": ba, "raw": [raw_ab, raw_ba],
               "result": combine(ab, ba)}
        rows.append(row)
        if out is not None:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def tally(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, max_unparsed: float = 1.0) -> dict:
    """Win/tie/loss shares of ``a`` with bootstrap 95% intervals (items resampled), over the items
    whose replies both named a verdict; a JudgeError when more than ``max_unparsed`` did not."""
    unparsed = sum(r["result"] == "unparsed" for r in rows)
    if rows and unparsed / len(rows) > max_unparsed:
        bad = next(r for r in rows if r["result"] == "unparsed")
        raise JudgeError(f"judge: {unparsed} of {len(rows)} items got a reply naming no verdict (A, B or tie), "
                         f"above max_unparsed {max_unparsed:.0%}; e.g. item {bad['id']!r}: {bad['raw']!r}. "
                         "Is --model a chat model that follows the instruction?")
    res = np.array([r["result"] for r in rows if r["result"] != "unparsed"])
    if not len(res):
        raise ValueError("judge: no items to tally")
    idx = resamples(len(res), n_boot, seed)
    out = {"n": int(len(res)), "unparsed": int(unparsed)}
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
