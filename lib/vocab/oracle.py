"""The oracle controls of stage 02: Korean rows copied from their English words' rows.

On a clone world (``korean_style: clone``, see lib/world/clone.py) every English word has one
Korean word and each is one token, so a Korean sentence is a token-for-token image of its English
translation. Copying each English word's input-embedding row *and* LM-head row onto its Korean
word's row makes the model read and write Korean exactly as English: the **positive control**,
whose Korean accuracy equals its English accuracy by construction. Blending the copy with the
ordinary initialisation (``alpha`` from 0 to 1) draws the calibration curve; copying the rows of
the wrong words (a derangement) is a **negative control** that must read chance.

    tmap = token_map(base_tok, merged_tok, read_word_map("outputs/toy/00_toy_world/data/word_map.jsonl"))
    info = apply_oracle(model, tmap, alpha=1.0)                  # after lib.vocab.resize.resize_and_init
    info = apply_oracle(model, tmap, alpha=1.0, deranged=True)   # the negative control
    image_rate(tmap, base_tok, merged_tok, en_lines, ko_lines)   # share of lines that map exactly

Only Korean pieces that are new rows (ids at or above the base vocab) are written: the base rows,
and so English behaviour, never change.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.core.io import write_json
from lib.data.wordpairs import read_pairs
from lib.vocab import resize
from lib.vocab.resize import resize_and_init

CONTROL_RE = re.compile(r"^(oracle|oracle_deranged)(?:@(\d*\.?\d+))?$")


@dataclass(frozen=True)
class TokenMap:
    """English base-vocab id -> Korean new-row id, and what could not be mapped."""
    pairs: dict[int, int]
    words: int                 # word pairs in the map file
    skipped: dict[str, list]   # reason -> example words


def read_word_map(path: str | Path) -> list[tuple[str, str]]:
    """``(english, korean)`` word pairs from 00's ``data/word_map.jsonl``; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no word map. The oracle controls need a clone toy world "
                                "(00_toy_world korean_style: clone or clone_sov), which writes "
                                "data/word_map.jsonl; the 'toy' Korean has no one-to-one map")
    return read_pairs(path)                 # the one word-pair reader (lib.data.wordpairs)


def _single(tok, piece: str) -> int | None:
    """The id of ``piece`` when the tokenizer's BPE model writes it as one token, else None."""
    ids = [t.id for t in tok.backend_tokenizer.model.tokenize(piece)]
    return ids[0] if len(ids) == 1 else None


def token_map(base_tok, merged_tok, word_pairs: list[tuple[str, str]]) -> TokenMap:
    """Map each English word's token to its Korean word's token, with and without the ``▁`` word
    prefix (``▁Answer`` after a space, ``Answer`` after a newline)."""
    n_base = len(base_tok)
    pairs: dict[int, int] = {}
    skipped: dict[str, list] = {"english_not_one_token": [], "korean_not_one_token": [],
                                "korean_in_base_vocab": []}
    for en, ko in word_pairs:
        mapped = False
        for prefix in ("▁", ""):
            e, k = _single(base_tok, prefix + en), _single(merged_tok, prefix + ko)
            if e is None or k is None:
                continue
            if k < n_base:
                skipped["korean_in_base_vocab"].append(ko)
                continue
            pairs[e] = k
            mapped = True
        if not mapped:
            if _single(base_tok, "▁" + en) is None:
                skipped["english_not_one_token"].append(en)
            elif _single(merged_tok, "▁" + ko) is None:
                skipped["korean_not_one_token"].append(ko)
    return TokenMap(pairs, len(word_pairs), skipped)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


@torch.no_grad()
def apply_oracle(model, tmap: TokenMap, alpha: float = 1.0, deranged: bool = False, seed: int = 0) -> dict:
    """Blend each mapped Korean row toward its English row: ``row_ko = alpha * row_en + (1 - alpha)
    * row_ko`` in the input embeddings and (when untied) the LM head. ``deranged``: each Korean row
    gets the row of another mapped English word instead."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"oracle_alpha must be in [0, 1], got {alpha}")
    if not tmap.pairs:
        raise ValueError("the oracle token map is empty: no English word and its Korean word are "
                         "single tokens of the base and merged tokenizers")
    en_ids = list(tmap.pairs)
    ko_ids = [tmap.pairs[e] for e in en_ids]
    src = [en_ids[j] for j in derangement(len(en_ids), seed)] if deranged else en_ids
    src_t, dst_t = torch.tensor(src), torch.tensor(ko_ids)
    mats = [model.get_input_embeddings().weight]
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if not tied:
        mats.append(model.get_output_embeddings().weight)
    for w in mats:
        w[dst_t] = (alpha * w[src_t].float() + (1 - alpha) * w[dst_t].float()).to(w.dtype)
    return {"alpha": alpha, "deranged": deranged, "mapped_tokens": len(en_ids), "word_pairs": tmap.words,
            "tied": tied, "skipped": {k: len(v) for k, v in tmap.skipped.items()},
            "skipped_examples": {k: v[:8] for k, v in tmap.skipped.items() if v}}


def image_rate(tmap: TokenMap, base_tok, merged_tok, en_lines: list[str], ko_lines: list[str]) -> float:
    """Share of parallel lines whose Korean token ids are exactly the mapped English ids (1.0 on
    a clone world; lower with clone_sov's verb-final order)."""
    en_ids = base_tok(en_lines, add_special_tokens=False)["input_ids"]
    ko_ids = merged_tok(ko_lines, add_special_tokens=False)["input_ids"]
    same = sum([tmap.pairs.get(t, t) for t in e] == k for e, k in zip(en_ids, ko_ids))
    return same / max(1, len(en_lines))


def parse_control(name: str) -> tuple[bool, float]:
    """``oracle`` / ``oracle_deranged`` with an optional ``@alpha``: (deranged, alpha)."""
    m = CONTROL_RE.match(name)
    if not m:
        raise ValueError(f"controls: {name!r} is not 'oracle', 'oracle_deranged' or one of them with "
                         "'@ALPHA' (e.g. 'oracle@0.25', alpha in [0, 1])")
    alpha = float(m.group(2)) if m.group(2) else 1.0
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"controls: {name!r}: alpha must be in [0, 1]")
    return m.group(1) == "oracle_deranged", alpha


def control_name(name: str) -> str:
    """The model name of a control in the tables: ``oracle``, ``oracle_deranged``, ``oracle-alpha-0.25``."""
    deranged, alpha = parse_control(name)
    base = "oracle_deranged" if deranged else "oracle"
    return base if "@" not in name else f"{base}-alpha-{alpha:.2f}"


ORACLE_INITS = ("oracle", "oracle_deranged")


def all_inits() -> tuple[str, ...]:
    """Every value 02's ``init`` takes: lib.vocab.resize's initialisations and the oracle controls."""
    return tuple(resize.INIT_METHODS) + ORACLE_INITS    # read now: a method added later counts


def check_controls(controls) -> None:
    """ValueError naming the first bad entry of 02's ``controls`` list (or a duplicate)."""
    if not isinstance(controls, (list, tuple)):
        raise ValueError(f"controls must be a list such as [oracle, oracle_deranged, 'oracle@0.5'], got {controls!r}")
    names = [control_name(str(c)) for c in controls]
    if len(set(names)) != len(names):
        raise ValueError(f"controls: duplicate names in {list(controls)}")


def initialise(model, base_tok, merged_tok, init: str, alpha: float = 1.0, word_map: str | Path | None = None,
               seed: int = 0) -> dict:
    """Resize and initialise the new rows (``lib.vocab.resize.resize_and_init``); the oracle inits start
    from ``subword_mean`` and then copy English rows through the word map (:func:`apply_oracle`)."""
    if init not in ORACLE_INITS:
        return resize_and_init(model, base_tok, merged_tok, init=init, seed=seed)
    if word_map is None:
        raise ValueError(f"init {init!r} needs word_map (00's data/word_map.jsonl)")
    tmap = token_map(base_tok, merged_tok, read_word_map(word_map))
    info = resize_and_init(model, base_tok, merged_tok, init="subword_mean", seed=seed)
    info["oracle"] = apply_oracle(model, tmap, alpha, deranged=init == "oracle_deranged", seed=seed)
    info["init"] = init
    return info


def save_controls(load_base, base_tok, merged_tok, controls: list[str], word_map: str | Path,
                  out_dir: str | Path, save, seed: int = 0) -> list[dict]:
    """Build and save one model per control name (see :func:`parse_control`) under
    ``out_dir/<name>/model`` and write ``out_dir/controls.json`` (07 scores every model listed).

    ``load_base()`` returns a fresh copy of the base model; ``save(model, folder)`` writes a
    ``from_pretrained`` folder. Each control is the base resized with ``subword_mean`` and then
    blended toward the copied (or deranged) English rows.
    """
    out_dir = Path(out_dir)
    specs = [(c, *parse_control(c)) for c in controls]    # validate every name before any work
    names = [control_name(c) for c in controls]
    if len(set(names)) != len(names):
        raise ValueError(f"controls: duplicate names in {controls}")
    tmap = token_map(base_tok, merged_tok, read_word_map(word_map))
    rows = []
    for (c, deranged, alpha), name in zip(specs, names):
        model = load_base()
        resize_and_init(model, base_tok, merged_tok, init="subword_mean", seed=seed)
        info = apply_oracle(model, tmap, alpha, deranged=deranged, seed=seed)
        folder = out_dir / name / "model"
        save(model, folder)
        rows.append({"name": name, "control": c, "path": str(folder.relative_to(out_dir)), **info})
        del model
    write_json(out_dir / "controls.json", rows)
    return rows
