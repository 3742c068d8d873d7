"""Merge a base SentencePiece tokenizer with a Korean one, save it for transformers, and measure it.

Stage 01 uses this module. The base model (Llama-2: byte-fallback BPE, 32,000 pieces) keeps every
piece at its id and score; the new Korean pieces are appended after it, so the model's existing
embedding rows stay valid and only new rows need initialising (stage 02):

    base = load_sp_model("/path/llama2/tokenizer.model")      # or a folder, or a Hub id
    korean = load_sp_model("/path/kobert/tokenizer.model")     # or train_korean_sp(corpus, 8000, out)
    merged, info = merge_sp(base, korean, mode="all")          # Llama-2 + KoBERT: 39,478 pieces
    tok = save_merged(merged, "outputs/run/01_vocab_merge/tokenizer")
    check_merge(base, merged, tok, sample_lines)                # raises on any broken invariant
    merge_stats(hf_tokenizer_from_sp(base), tok, ko_lines, en_lines)

Two tokenizers have to agree on every text: the merged SentencePiece model (``tokenizer.model``)
and the transformers tokenizer built from it (``tokenizer.json``). Two facts make that work:
- sentencepiece applies BPE merges by piece score, while transformers 5.x converts a ``.model``
  ranking merges by piece id. Appended pieces therefore get scores below the base minimum that
  keep falling with id, and the saved ``tokenizer.json`` lists merges in score order. (The stock
  conversion of Llama-2 ranks the ``▁▁`` run pieces, scored -1e9, first: it tokenizes text with
  double spaces differently from sentencepiece, e.g. 138 of the 978 MLQA English paragraphs.)
- a character that is not itself a piece falls apart into bytes in transformers before any
  merge, while sentencepiece can still merge it; appended pieces holding such a character are
  skipped.
One difference is left and is inherited from transformers' Llama tokenizer: for text that starts
with a space, sentencepiece adds its ``▁`` dummy prefix but transformers does not. Strip lines.

``info["unreachable"]`` counts appended pieces that no BPE merge can build (a unigram vocab like
KoBERT's lacks the intermediate pieces: 1,117 of its 7,478 new pieces, e.g. ``▁가장``). They keep
their ids, so the published sizes hold, but no text is ever tokenized into them.

Token counts in the statistics never include BOS (Llama-2: 21 tokens for 햄버거를 먹는 공룡).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import huggingface_hub
import numpy as np
import sentencepiece as spm
from google.protobuf.message import DecodeError
from huggingface_hub.errors import EntryNotFoundError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from lib.core.readers import read_lines
from lib.data.instructions import HANGUL
from lib.vocab.sptrain import train_sentencepiece

MERGE_MODES = ("all", "hangul")
_Piece = sp_pb2.ModelProto.SentencePiece
_APPENDABLE = (_Piece.NORMAL, _Piece.USER_DEFINED)
_SKIP_REASON = {_Piece.CONTROL: "control", _Piece.UNKNOWN: "unknown", _Piece.BYTE: "byte",
                _Piece.UNUSED: "unused"}
# Hangul Jamo, Compatibility Jamo, Jamo Extended-A, Syllables and Jamo Extended-B.


# ----------------------------------------------------------------------------- loading

def _not_sentencepiece(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a SentencePiece model ({why}). This stage merges SentencePiece "
                      "tokenizers (Llama-2, KoBERT): give a .model file, a folder holding "
                      "tokenizer.model, or a Hub id whose repo has tokenizer.model.")


def looks_like_path(spec: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else is meant as a local path."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
            or spec.endswith((".model", ".json")))


def _hub_sp_file(repo_id: str) -> Path:
    try:                            # hf_hub_download looked up when called: a test stands in for it
        return Path(huggingface_hub.hf_hub_download(repo_id, "tokenizer.model"))
    except (OSError, ValueError, EntryNotFoundError) as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local file or folder, and tokenizer.model could not be fetched "
            f"from the Hugging Face Hub repo of that name ({type(e).__name__}: {e}). Check the "
            "path, or the Hub id and your network / HF_TOKEN.") from e


def load_sp_model(spec: str | Path) -> sp_pb2.ModelProto:
    """The SentencePiece ``ModelProto`` of a ``.model`` file, a folder with ``tokenizer.model``,
    or a Hub id (downloads ``tokenizer.model``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.model").is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise _not_sentencepiece(path, f"the folder has no tokenizer.model; found: {found}")
        path = path / "tokenizer.model"
    elif not path.exists():
        if looks_like_path(str(spec)):
            raise FileNotFoundError(f"{path}: no such file or folder (expected a SentencePiece "
                                    ".model file or a folder holding tokenizer.model)")
        path = _hub_sp_file(str(spec))
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as e:
        raise _not_sentencepiece(path, f"protobuf cannot parse it: {e}") from e
    if not proto.pieces:
        raise _not_sentencepiece(path, "it holds no pieces")
    return proto


def train_korean_sp(corpus_path: str | Path, vocab_size: int, out_model: str | Path) -> Path:
    """Train a unigram Korean SentencePiece model (KoBERT's kind) on a text file; returns its path."""
    lines = read_lines(corpus_path)
    try:
        # No byte fallback: the base model has the byte pieces; 256 more would be skipped anyway.
        return train_sentencepiece(lines, out_model, vocab_size, model_type="unigram",
                                   byte_fallback=False, character_coverage=0.9995)
    except RuntimeError as e:
        why = str(e).rstrip(".")
        raise ValueError(f"{corpus_path}: training a {vocab_size}-piece SentencePiece model on its "
                         f"{len(lines)} lines failed: {why}. Lower korean_vocab_size or give a "
                         "larger korean_corpus.") from e


# ----------------------------------------------------------------------------- merging

def _skip_reason(piece, known: set[str], mode: str) -> str | None:
    if piece.type not in _APPENDABLE:
        return _SKIP_REASON.get(piece.type, f"type_{piece.type}")
    if piece.piece in known:
        return "duplicate"
    if mode == "hangul" and not HANGUL.search(piece.piece):
        return "no_hangul"
    return None


def _falling_scores(start: float, n: int) -> list[float]:
    """``n`` float32 scores strictly below ``start``, falling by 1 where float32 can tell (as
    Llama's own), else by one float32 step (Llama's minimum is -1e9, where a step is 64)."""
    out, s = [], np.float32(start)
    for _ in range(n):
        nxt = np.float32(s - np.float32(1))
        s = nxt if nxt < s else np.nextafter(s, np.float32(-np.inf))
        out.append(float(s))
    return out


def _unreachable(pieces: Sequence[str], vocab: set[str]) -> list[str]:
    """Pieces BPE can never produce: no way to build them by merging two pieces of the vocab.

    Unigram pieces (KoBERT) often lack such a path (``▁밝혔다`` without ``▁밝혔`` or ``밝혔다``);
    they stay in the vocab (ids and counts are the published ones) but no text ever uses them.
    """
    memo: dict[str, bool] = {}

    def reachable(w: str) -> bool:
        if len(w) == 1:
            return True
        if w not in memo:
            memo[w] = any(w[:k] in vocab and w[k:] in vocab and reachable(w[:k]) and reachable(w[k:])
                          for k in range(1, len(w)))
        return memo[w]
    return [w for w in pieces if not reachable(w)]


def merge_sp(base: sp_pb2.ModelProto, korean: sp_pb2.ModelProto, mode: str = "all",
             names: tuple[str, str] = ("the base tokenizer", "the Korean tokenizer")
             ) -> tuple[sp_pb2.ModelProto, dict]:
    """The base model with the new Korean pieces appended, and counts of what was added/skipped.

    ``mode="all"``: every normal Korean piece not already in base; ``"hangul"``: only those that
    contain a Hangul character (KoBERT's ``▁10``/``00`` would change how English digits split).
    Base normaliser and trainer spec (Llama: identity, byte fallback) are kept. A merge that
    adds nothing (the same tokenizer twice) raises, naming the two (``names``: base, Korean).
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode {mode!r} is unknown; use one of {MERGE_MODES}: 'all' appends "
                         "every new Korean piece, 'hangul' only pieces containing Hangul")
    if base.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        kind = sp_pb2.TrainerSpec.ModelType.Name(base.trainer_spec.model_type)
        raise ValueError(f"the base tokenizer is a {kind} SentencePiece model; merge_sp appends to "
                         "a BPE model (Llama's kind). Pass the base model as `base`, Korean second.")
    known = {p.piece for p in base.pieces}
    skipped: Counter = Counter()
    candidates = []
    for p in korean.pieces:
        reason = _skip_reason(p, known, mode)
        if reason:
            skipped[reason] += 1
            continue
        known.add(p.piece)
        candidates.append(p)
    # transformers turns a character that is not a piece into bytes before merging;
    # sentencepiece would still merge it: such pieces would make the two disagree.
    chars = {w for w in known if len(w) == 1}
    new = []
    for p in candidates:
        if all(c in chars for c in p.piece):
            new.append(p)
        else:
            skipped["char_not_in_vocab"] += 1

    if not new:
        raise ValueError(f"merging {names[1]} into {names[0]} adds no pieces (of its {len(korean.pieces)} "
                         f"pieces, skipped: {dict(sorted(skipped.items()))}): is it the same tokenizer "
                         f"twice? Give a Korean SentencePiece model as korean_tokenizer.")
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    for p, score in zip(new, _falling_scores(min(q.score for q in base.pieces), len(new))):
        merged.pieces.add(piece=p.piece, score=score, type=p.type)
    vocab = {p.piece for p in merged.pieces}
    unreachable = _unreachable([p.piece for p in new], vocab)
    info = {"mode": mode, "base_size": len(base.pieces), "korean_size": len(korean.pieces),
            "merged_size": len(merged.pieces), "added": len(new),
            "added_with_hangul": sum(bool(HANGUL.search(p.piece)) for p in new),
            "skipped": dict(sorted(skipped.items())),
            "unreachable": len(unreachable), "unreachable_examples": unreachable[:5]}
    return merged, info


# ----------------------------------------------------------------------------- saving

def _score_ordered_merges(proto: sp_pb2.ModelProto) -> list[list[str]]:
    """BPE merges ranked as sentencepiece applies them: higher score first, then lower id."""
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != _Piece.NORMAL:
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in ids and right in ids:
                ranked.append((-p.score, i, ids[left], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _write_tokenizer_files(proto: sp_pb2.ModelProto, folder: Path) -> None:
    """tokenizer.model + transformers' files (tokenizer.json, tokenizer_config.json) in ``folder``.

    The BOS lives in tokenizer.json's post-processor: transformers 5 drops ``add_bos_token`` from
    tokenizer_config.json whenever a tokenizer.json is present, so the reloaded flag reads False.
    """
    from transformers import LlamaTokenizerFast  # transformers: ~0.8 s to import; only for HF tokenizer files

    norm = proto.normalizer_spec
    if norm.name not in ("identity", "") or norm.remove_extra_whitespaces:
        raise ValueError(f"the base tokenizer normalises text ({norm.name!r}, remove_extra_whitespaces="
                         f"{norm.remove_extra_whitespaces}); transformers' Llama tokenizer does not, so "
                         "the two would disagree. Use a base trained with identity normalisation "
                         "(as Llama; see lib.vocab.sptrain).")
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    # AutoTokenizer on a folder holding only tokenizer.model builds a generic tokenizer without
    # the "▁" dummy prefix; the Llama class converts it as sentencepiece encodes.
    LlamaTokenizerFast.from_pretrained(folder, add_bos_token=True).save_pretrained(folder)
    tj_path = folder / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tj["model"]["merges"] = _score_ordered_merges(proto)
    tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")


def save_merged(proto: sp_pb2.ModelProto, out_dir: str | Path, overwrite: bool = False):
    """Write the merged tokenizer folder atomically and return it loaded with ``AutoTokenizer``."""
    from transformers import AutoTokenizer  # transformers: ~0.8 s to import; only for HF tokenizer files

    out_dir = Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass overwrite=True to "
                              "replace it, or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_tokenizer_files(proto, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return AutoTokenizer.from_pretrained(out_dir, add_bos_token=True)


def hf_tokenizer_from_sp(proto: sp_pb2.ModelProto):
    """The transformers tokenizer (BOS added) that encodes exactly as this SentencePiece model."""
    from transformers import AutoTokenizer  # transformers: ~0.8 s to import; only for HF tokenizer files
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(proto, Path(tmp))
        return AutoTokenizer.from_pretrained(tmp, add_bos_token=True)


def load_hf_tokenizer(spec: str | Path):
    """A transformers tokenizer with BOS added, from a Hub id, a folder or a ``.model`` file.

    A folder with tokenizer.json loads as saved (the tokenizer a model was trained with); a
    ``.model`` file or a folder with only tokenizer.model is converted by :func:`hf_tokenizer_from_sp`.
    """
    from transformers import AutoTokenizer  # transformers: ~0.8 s to import; only for HF tokenizer files
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path, add_bos_token=True)
    if path.exists() or looks_like_path(str(spec)):
        return hf_tokenizer_from_sp(load_sp_model(path))
    return AutoTokenizer.from_pretrained(str(spec), add_bos_token=True)


# ----------------------------------------------------------------------------- statistics

def _token_ids(tok, lines: Sequence[str]) -> list[list[int]]:
    """Ids per line without BOS/EOS (batched: the Rust tokenizer runs the whole list at once)."""
    return tok(list(lines), add_special_tokens=False)["input_ids"] if lines else []


def _nonempty(lines: Iterable[str], what: str) -> list[str]:
    lines = list(lines)
    if not lines:
        raise ValueError(f"no {what} lines given; pass at least one line of text")
    return lines


def tokens_per_char(tokenizer, lines: Sequence[str]) -> float:
    """Tokens (BOS excluded) per Unicode character over all lines."""
    lines = _nonempty(lines, "sample")
    chars = sum(len(s) for s in lines)
    if chars == 0:
        raise ValueError("the sample lines hold no characters")
    return sum(len(ids) for ids in _token_ids(tokenizer, lines)) / chars


def en_drift(before, after, lines: Sequence[str]) -> float:
    """Fraction of lines whose token ids differ between the two tokenizers (0 = untouched)."""
    lines = _nonempty(lines, "English")
    changed = sum(a != b for a, b in zip(_token_ids(before, lines), _token_ids(after, lines)))
    return changed / len(lines)


def merge_stats(before_tok, after_tok, ko_lines: Sequence[str], en_lines: Sequence[str]) -> dict:
    """Korean and English tokens per character before/after the merge, and English drift."""
    return {
        "ko_tokens_per_char": {"before": tokens_per_char(before_tok, ko_lines),
                               "after": tokens_per_char(after_tok, ko_lines)},
        "en_tokens_per_char": {"before": tokens_per_char(before_tok, en_lines),
                               "after": tokens_per_char(after_tok, en_lines)},
        "en_drift": en_drift(before_tok, after_tok, en_lines),
        "ko_lines": len(ko_lines), "en_lines": len(en_lines),
    }


def example_tokenizations(before, after, texts: Sequence[str]) -> list[dict]:
    """One row per text: pieces and token counts (BOS excluded) before and after, for a table."""
    rows = []
    for text, b, a in zip(texts, _token_ids(before, texts), _token_ids(after, texts)):
        rows.append({"text": text, "tokens_before": len(b), "tokens_after": len(a),
                     "pieces_before": before.convert_ids_to_tokens(b),
                     "pieces_after": after.convert_ids_to_tokens(a)})
    return rows


def sequence_lengths(tok, lines: Sequence[str]) -> list[int]:
    """Tokens per line (BOS excluded), for a before/after histogram."""
    return [len(ids) for ids in _token_ids(tok, lines)]


# ----------------------------------------------------------------------------- invariants

def _fail(msg: str) -> None:
    # AssertionError, but raised explicitly: `assert` statements vanish under `python -O`.
    raise AssertionError(msg)


def _check_pieces(base: sp_pb2.ModelProto, merged: sp_pb2.ModelProto) -> None:
    n = len(base.pieces)
    if len(merged.pieces) < n:
        _fail(f"merged model has {len(merged.pieces)} pieces, fewer than the base's {n}")
    for i, (b, m) in enumerate(zip(base.pieces, merged.pieces)):
        if (b.piece, b.score, b.type) != (m.piece, m.score, m.type):
            _fail(f"base id {i} changed: base ({b.piece!r}, score {b.score}, type {b.type}) vs "
                  f"merged ({m.piece!r}, score {m.score}, type {m.type})")
    dup = [w for w, c in Counter(p.piece for p in merged.pieces).items() if c > 1]
    if dup:
        _fail(f"{len(dup)} pieces occur twice in the merged model, e.g. {dup[:5]}")
    bad = [(i, p.piece) for i, p in enumerate(merged.pieces[n:], start=n) if p.type not in _APPENDABLE]
    if bad:
        _fail(f"appended pieces must be normal, not byte/control/unknown: {bad[:5]}")
    floor = min(p.score for p in base.pieces)
    scores = [p.score for p in merged.pieces[n:]]
    if any(s >= floor for s in scores) or any(nxt >= prev for prev, nxt in zip(scores, scores[1:])):
        _fail(f"appended scores must be below the base minimum {floor} and strictly fall with id "
              "(sentencepiece ranks merges by score, transformers by id)")


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_merge(base_proto: sp_pb2.ModelProto, merged_proto: sp_pb2.ModelProto, hf_tok,
                sample_lines: Sequence[str]) -> None:
    """Raise AssertionError naming the first broken invariant of a merge, else return None.

    Base ids and scores kept; no duplicate piece; no byte/control piece appended; appended scores
    falling; the transformers tokenizer has the same vocab, adds BOS, encodes every sample exactly
    as the merged sentencepiece model (BOS excluded) and decodes it back to the same text.
    """
    lines = _nonempty(sample_lines, "sample")
    _check_pieces(base_proto, merged_proto)
    expected_vocab = {p.piece: i for i, p in enumerate(merged_proto.pieces)}
    if hf_tok.get_vocab() != expected_vocab:
        _fail(f"the transformers tokenizer has {len(hf_tok.get_vocab())} tokens, not the merged "
              f"model's {len(expected_vocab)} pieces at the same ids; save it with save_merged")
    bos = merged_proto.trainer_spec.bos_id
    if bos >= 0 and hf_tok("a")["input_ids"][:1] != [bos]:
        _fail(f"the transformers tokenizer does not start sequences with BOS (id {bos}); load it "
              "with add_bos_token=True")
    sp = spm.SentencePieceProcessor(model_proto=merged_proto.SerializeToString())
    for n, (line, hf_ids) in enumerate(zip(lines, _token_ids(hf_tok, lines))):
        sp_ids = sp.encode(line)
        hint = (" (the line starts with whitespace: sentencepiece adds its '▁' prefix there, "
                "transformers does not; strip lines)" if line[:1].isspace() else "")
        if hf_ids != sp_ids:
            k = _first_diff(hf_ids, sp_ids)
            _fail(f"sample line {n} tokenizes differently{hint}: {line[:80]!r}; first difference "
                  f"at token {k}: transformers {sp.id_to_piece(hf_ids[k:k + 4])} vs sentencepiece "
                  f"{sp.id_to_piece(sp_ids[k:k + 4])}")
        back = hf_tok.decode(hf_ids)
        if back != line:
            _fail(f"sample line {n} does not decode back to itself{hint}: {line[:80]!r} -> {back[:80]!r}")
