"""06's prompt format as a tokenizer ``chat_template`` (Jinja), so ``apply_chat_template``, vLLM
and lm-eval's chat mode give the model exactly the token ids it was trained on::

    tok.chat_template = jinja_template(template, tok)     # done by stage 06 before training
    ids = tok.apply_chat_template(messages_of(rec, template.system), tokenize=True)

Why the rendered text is chosen by probing the tokenizer: 06 tokenizes every segment on its own
(:mod:`lib.data.instructions`), so each user turn starts with SentencePiece's dummy ``▁``. The
rendered string is tokenized in one piece, split at the special tokens; whether text right after
``<s>`` gets a ``▁`` depends on the tokenizer (transformers 5's Metaspace ``prepend_scheme=first``
adds none, a legacy ``Prepend`` normalizer adds one to every piece). So a space after BOS is
written or not, whichever reproduces 06's ids on a probe conversation; :func:`template_check`
then counts the training records whose ids match exactly (``metrics["chat_template"]``).
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from lib.data.instructions import Template, encode

_SLOT = re.compile(r"(\{system\}|\{instruction\})")


def _lit(text: str) -> str:
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _turn(pattern: str) -> str:
    """Jinja for one user-turn pattern: literals quoted, slots as variables."""
    return "".join({"{system}": "{{ system }}", "{instruction}": "{{ message['content'] | trim }}"}.get(p) or _lit(p)
                   for p in _SLOT.split(pattern))


def _jinja(template: Template, bos: str, eos: str, after_bos: str) -> str:
    return (
        "{%- set system = " + json.dumps(template.system, ensure_ascii=False) + " -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}" + _lit(bos + after_bos) +
        "{%- if loop.first -%}" + _turn(template.prompt) + "{%- else -%}" + _turn(template.turn) + "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ' + (message['content'] | trim) }}" + _lit(eos) +
        "{%- else -%}{{ raise_exception('roles must be user and assistant after an optional system message') }}"
        "{%- endif -%}{%- endfor -%}")


def messages_of(rec: dict, system: str | None = None, template: Template | None = None) -> list[dict]:
    """A record (history, instruction, input, output) as chat messages, as 06 renders it."""
    t = template or Template()
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for u, a in rec.get("history") or []:
        msgs += [{"role": "user", "content": u.strip()}, {"role": "assistant", "content": a}]
    msgs += [{"role": "user", "content": t.user_text(rec["instruction"], rec.get("input") or "")},
             {"role": "assistant", "content": rec["output"]}]
    return msgs


def _ids(tok, jinja: str, msgs: list[dict]) -> list[int]:
    out = tok.apply_chat_template(msgs, chat_template=jinja, tokenize=True, return_dict=True)
    return list(out["input_ids"])


_PROBE = {"instruction": "Which city?", "input": "", "output": "Busan.", "history": [["Hi there", "Hello."]]}


def jinja_template(template: Template, tok) -> str:
    """The chat template of ``template`` for ``tok`` whose rendering gives 06's ids on a probe."""
    bos = tok.bos_token if tok.bos_token_id is not None else ""
    want = encode(tok, [{**_PROBE, "lang": "en"}], template, 10**6)[0][0].ids
    for after_bos in ("", " "):
        jinja = _jinja(template, bos, tok.eos_token, after_bos)
        if _ids(tok, jinja, messages_of(_PROBE, template.system, template)) == want:
            return jinja
    raise ValueError("no chat template reproduces 06's token ids for this tokenizer "
                     f"({type(tok).__name__}); report it with the tokenizer's tokenizer.json")


def template_check(tok, records: Sequence[dict], template: Template, limit: int = 200) -> dict:
    """How many of the first ``limit`` records ``apply_chat_template`` turns into 06's exact ids."""
    recs = list(records)[:limit]
    exs, _ = encode(tok, recs, template, 10**6)
    same = sum(_ids(tok, tok.chat_template, messages_of(r, template.system, template)) == e.ids
               for r, e in zip(recs, exs))
    return {"records": len(recs), "exact": same, "share": same / max(len(recs), 1)}
