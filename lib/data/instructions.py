"""Instruction records and how they become tokens: the data side of stage 06 (:mod:`lib.train.sft`).

Alpaca-style records (``instruction``, ``input``, ``output``, optional ``history`` of
``[user, assistant]`` pairs, optional ``lang``) are read from JSON or JSONL files, validated
(errors name the file and record), rendered with a chat :class:`Template` (default: Bllossom's
Llama-2 format) and tokenized with a label mask that keeps the responses only.

How a record becomes tokens (one turn; history turns repeat the pattern before it)::

    <s> [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{instruction}\\n{input} [/INST] {output} </s>
    |------------------------- label -100 ----------------------------| |-- learned --|

- ``input``, when not empty, follows the instruction after ``input_sep`` (a newline).
- Earlier turns of ``history`` are rendered first: the first user turn with the system prompt
  (``prompt_template``), later ones with ``turn_template``, each assistant answer closed by EOS
  and each new user turn opened by BOS, as Llama-2 chat does. Their answers are learned too when
  ``loss_on_history`` is true.
- Segments are tokenized **separately and the ids concatenated** (BOS/EOS added as ids), not
  tokenized as one string: the prompt ids are then exactly what generation feeds the model
  (the prompt is tokenized alone there too), the label boundary is exact by construction, and no
  token can straddle ``[/INST]`` and the answer. SentencePiece's dummy prefix makes the answer
  start with ``▁``, i.e. the same ids as the joint string ``prompt + " " + output`` in almost every
  case; ``metrics["boundary"]`` counts the records where the two differ. Outputs are stripped.
- Records without ``lang`` are detected: ``ko`` when at least 30% of the letters of their
  instruction are Hangul (the language the user asks in), else ``en``.
- Sequences longer than ``max_len`` are cut at ``max_len`` (the end of the answer is lost);
  one with no answer token left is dropped. Both are counted in ``metrics["data"]``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lib.modeling.losses import IGNORE_INDEX
from lib.modeling.model import special_id

SYSTEM_PROMPT = "You are a helpful assistant. 당신은 유능한 AI 어시스턴트 입니다."
PROMPT_TEMPLATE = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{instruction} [/INST]"
TURN_TEMPLATE = "[INST] {instruction} [/INST]"
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff]")  # jamo, compatibility jamo, syllables


# ----------------------------------------------------------------------------- records

def hangul_share(text: str) -> float:
    """Share of the letters of ``text`` that are Hangul (0 for text without letters)."""
    letters = [c for c in text if c.isalpha()]
    return sum(bool(HANGUL.match(c)) for c in letters) / len(letters) if letters else 0.0


def detect_lang(text: str, threshold: float = 0.3) -> str:
    return "ko" if hangul_share(text) >= threshold else "en"


def _check_record(rec: Any, where: str) -> dict:
    """A validated copy: strings for instruction/input/output, history as [[user, assistant]]."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with instruction/input/output, got {type(rec).__name__}")
    for key in ("instruction", "output"):
        if not isinstance(rec.get(key), str):
            raise ValueError(f"{where}: '{key}' must be a string, got {rec.get(key)!r:.60}")
    inp = rec.get("input") or ""
    if not isinstance(inp, str):
        raise ValueError(f"{where}: 'input' must be a string, got {type(inp).__name__}")
    history = rec.get("history") or []
    if not (isinstance(history, list) and all(isinstance(t, (list, tuple)) and len(t) == 2
                                              and all(isinstance(x, str) for x in t) for t in history)):
        raise ValueError(f"{where}: 'history' must be a list of [user, assistant] string pairs")
    lang = rec.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise ValueError(f"{where}: 'lang' must be a string like \"ko\", got {lang!r}")
    out = {"instruction": rec["instruction"], "input": inp, "output": rec["output"],
           "history": [list(t) for t in history], "lang": lang or detect_lang(rec["instruction"]),
           "lang_given": lang is not None}
    if "pair" in rec:            # parallel records (lib.data.parallel): the two languages of one item
        out["pair"] = rec["pair"]
    return out


def read_records(path: str | Path) -> list[dict]:
    """Alpaca records of one file: ``.jsonl`` (one object a line) or JSON (a list of objects)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: instruction file not found")
    text = path.read_text(encoding="utf-8-sig")      # -sig: a leading byte-order mark is dropped
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_check_record(json.loads(line), f"{path}:{i}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        out = rows
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg}); JSON Lines files must end "
                             "in .jsonl") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a JSON instruction file must hold a list of records")
        out = [_check_record(r, f"{path}, record {i}") for i, r in enumerate(data)]
    if not out:
        raise ValueError(f"{path}: no instruction records")
    return out


def load_instructions(files: Sequence[str | Path], languages: Sequence[str], max_examples: int = 0
                      ) -> tuple[list[dict], dict]:
    """Records of every file whose language is in ``languages`` (first ``max_examples`` if > 0)."""
    records, report = [], {"files": {}, "dropped_language": 0, "detected_lang": 0}
    for f in files:
        rows = read_records(f)
        report["files"][str(f)] = len(rows)
        report["detected_lang"] += sum(not r["lang_given"] for r in rows)
        kept = [r for r in rows if r["lang"] in languages]
        report["dropped_language"] += len(rows) - len(kept)
        records += kept
    if max_examples:
        records = records[:max_examples]
    if not records:
        raise ValueError(f"no record in {list(map(str, files))} has a language in {list(languages)}")
    return records, report


def split_heldout(records: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): ``n`` records chosen by a seeded permutation, both in file order."""
    if n >= len(records):
        raise ValueError(f"eval_examples ({n}) must be smaller than the number of records ({len(records)})")
    held = set(np.random.default_rng([seed, 6]).permutation(len(records))[:n].tolist())
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


# ----------------------------------------------------------------------------- template

@dataclass(frozen=True)
class Template:
    """How a conversation becomes text. ``prompt``: the first user turn (``{system}``,
    ``{instruction}``); ``turn``: later user turns; ``input_sep``: between instruction and input."""
    prompt: str = PROMPT_TEMPLATE
    turn: str = TURN_TEMPLATE
    system: str = SYSTEM_PROMPT
    input_sep: str = "\n"

    def __post_init__(self):
        for name in ("prompt", "turn"):
            if "{instruction}" not in getattr(self, name):
                raise ValueError(f"the {name} template must contain {{instruction}}, got "
                                 f"{getattr(self, name)!r}")

    def user_text(self, instruction: str, input: str = "") -> str:
        instruction, input = instruction.strip(), input.strip()
        return instruction + self.input_sep + input if input else instruction

    def user_turn(self, text: str, first: bool) -> str:
        # replace, not str.format: user text and templates may hold other braces
        if first:
            return self.prompt.replace("{system}", self.system).replace("{instruction}", text)
        return self.turn.replace("{instruction}", text)

    def turns(self, rec: dict) -> list[tuple[str, str]]:
        """[(rendered user turn, assistant answer)], history first, the record's own turn last."""
        pairs = [(u.strip(), a) for u, a in rec.get("history") or []]
        pairs.append((self.user_text(rec["instruction"], rec.get("input") or ""), rec["output"]))
        return [(self.user_turn(u, i == 0), a.strip()) for i, (u, a) in enumerate(pairs)]

    def generation_prompt(self, instruction: str, input: str = "") -> str:
        return self.user_turn(self.user_text(instruction, input), first=True)

    def render(self, rec: dict, bos: str = "<s>", eos: str = "</s>") -> str:
        """The conversation as one display string (the space is SentencePiece's dummy prefix)."""
        return "".join(f"{bos}{u} {a}{eos}" for u, a in self.turns(rec))


def template_from(cfg: Any) -> Template:
    return Template(cfg.prompt_template, cfg.turn_template, cfg.system_prompt, cfg.input_sep)


# ----------------------------------------------------------------------------- tokens

@dataclass
class Example:
    ids: list[int]
    mask: list[int]          # 1 where the token is a target (answers and their EOS)
    lang: str
    truncated: bool = False


def encode(tok, records: Sequence[dict], template: Template, max_len: int,
           loss_on_history: bool = True) -> tuple[list[Example], dict]:
    """Token ids and target masks of ``records`` (segments tokenized separately, see module doc)."""
    bos, eos = special_id(tok, "bos"), special_id(tok, "eos")
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: the model could not learn to stop")
    turns = [template.turns(r) for r in records]
    texts = [t for conv in turns for pair in conv for t in pair]
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    k, out = 0, []
    report = {"truncated": 0, "dropped_too_long": 0}
    for rec, conv in zip(records, turns):
        seq, mask = [], []
        for j in range(len(conv)):
            user, answer = ids[k], ids[k + 1]
            k += 2
            learn = 1 if (j == len(conv) - 1 or loss_on_history) else 0
            head = ([bos] if bos is not None else []) + user
            seq += head + answer + [eos]
            mask += [0] * len(head) + [learn] * (len(answer) + 1)
        cut = len(seq) > max_len
        seq, mask = seq[:max_len], mask[:max_len]
        if not any(mask):
            report["dropped_too_long"] += 1
            continue
        report["truncated"] += cut
        out.append(Example(seq, mask, rec["lang"], cut))
    return out, report


def boundary_check(tok, records: Sequence[dict], template: Template) -> dict:
    """How often ``tok(prompt) + tok(output)`` equals ``tok(prompt + " " + output)`` (last turn)."""
    prompts = [template.turns(r)[-1] for r in records]
    sep = tok([p for p, _ in prompts], add_special_tokens=False)["input_ids"]
    ans = tok([a for _, a in prompts], add_special_tokens=False)["input_ids"]
    joint = tok([f"{p} {a}" for p, a in prompts], add_special_tokens=False)["input_ids"]
    same = sum(s + a == j for s, a, j in zip(sep, ans, joint))
    return {"records": len(records), "same_as_joint": same, "share": same / max(len(records), 1)}


def labels_of(ex: Example) -> list[int]:
    return [t if m else IGNORE_INDEX for t, m in zip(ex.ids, ex.mask)]


def collate(examples: Sequence[Example], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    lab = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        att[i, :n] = 1
        lab[i, :n] = torch.tensor(labels_of(e))
    return {"input_ids": ids, "attention_mask": att, "labels": lab}
