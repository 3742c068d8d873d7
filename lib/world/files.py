"""Write a toy world to disk, read parts of it back, and guard it against leaked facts.

Usage::

    from lib.world import build_world, write_world, leaked_facts, WorldSpec
    sizes = write_world(build_world(WorldSpec()), out_dir)   # {"data/ko_mono.txt": {"lines":..,"chars":..}, ...}
    assert leaked_facts(out_dir) == []                       # no Korean line states an evaluated fact

Every file is written to ``<name>.tmp`` and renamed, so a reader never sees half a file; the
same world gives byte-identical files (UTF-8, ``\\n`` line ends, JSON with ``ensure_ascii=False``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from lib.data.packing import qa_documents

from .world import World, spec_dict

# Files whose text is Korean training (or Korean-facing) data: all must be free of evaluated facts.
# instructions.jsonl is checked whole (English records carry Korean translation outputs).
KOREAN_TEXT_FILES = ("data/bridge_train.ko", "data/heldout_pairs.ko", "data/ko_mono.txt",
                     "data/stage3_ko.txt", "data/sample.ko")
# Every file a stage trains on (the evaluated questions must be in none of them, in any language).
TRAINING_FILES = ("data/en_pretrain.txt", "data/bridge_train.en", "data/bridge_train.ko", "data/ko_mono.txt",
                  "data/stage3_ko.txt", "data/stage3_en.txt", "data/instructions.jsonl",
                  "data/instructions_parallel.jsonl", "data/sample.en", "data/sample.ko")
INSTRUCTIONS_FILE = "data/instructions.jsonl"
PARALLEL_INSTRUCTIONS_FILE = "data/instructions_parallel.jsonl"
INSTRUCTION_FILES = (INSTRUCTIONS_FILE, PARALLEL_INSTRUCTIONS_FILE)   # JSONL records, checked whole
FACTS_FILE = "eval/facts.jsonl"
WORD_MAP_FILE = "data/word_map.jsonl"


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def lines_text(lines: list[str], where: str) -> str:
    """Lines joined with newlines; empty lines or embedded newlines are a bug of the generator."""
    for i, line in enumerate(lines, 1):
        if not line.strip() or "\n" in line:
            raise ValueError(f"{where}:{i}: empty line or embedded newline {line!r}")
    return "".join(line + "\n" for line in lines)


def write_world(world: World, out_dir: str | Path) -> dict[str, dict[str, int]]:
    """Write every split under ``out_dir``; returns ``{relative path: {"lines": n, "chars": n}}``.

    Besides the splits (see :mod:`lib.world.splits`) it writes ``data/entities.jsonl`` (every
    entity with both forms), for the clone styles ``data/word_map.jsonl`` (every English word and
    its Korean word: stage 02's oracle reads it), and ``world.json`` (the spec and these sizes).
    """
    out_dir = Path(out_dir)
    texts: dict[str, str] = {}
    for rel, lines in world.texts.items():
        texts[rel] = lines_text(lines, rel)
    records = dict(world.records)
    records["data/entities.jsonl"] = [
        {"key": e.key, "category": e.category, "en": e.en, "ko": e.ko,
         "role": ("knowledge" if e.key in world.knowledge_people else
                  "bridge" if e.key in world.bridge_people else
                  "ghost" if e.key in world.ghost_people else "")}
        for e in world.entities.values()]
    if world.wordmap is not None:
        records[WORD_MAP_FILE] = [{"en": en, "ko": ko} for en, ko in world.wordmap.pairs()]
    for rel, rows in records.items():
        texts[rel] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    sizes = {rel: {"lines": text.count("\n"), "chars": len(text)} for rel, text in sorted(texts.items())}
    for rel, text in sorted(texts.items()):
        write_text_atomic(out_dir / rel, text)
    meta = {"spec": spec_dict(world.spec), "sizes": sizes}
    write_text_atomic(out_dir / "world.json", json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return sizes


def file_lines(path: str | Path) -> list[str]:
    """Every line of a UTF-8 text file as written (empty ones too; lib.core.readers.read_lines skips
    them), without its newline; names the file on a decoding error."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 ({err})") from err


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a bad line raises naming the file and line."""
    rows = []
    for i, line in enumerate(file_lines(path), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not JSON ({err.msg})") from err
    return rows


def evaluated_facts(world_or_dir: World | str | Path, cell: str | None = None) -> list[dict]:
    """The evaluated facts as rows with ``id, cell, subject_en, subject_ko, object_en, object_ko``
    (only those of ``cell`` when given)."""
    if isinstance(world_or_dir, World):
        rows = world_or_dir.records[FACTS_FILE]
    else:
        rows = read_jsonl(Path(world_or_dir) / FACTS_FILE)
    return [r for r in rows if cell is None or r.get("cell", "knowledge") == cell]


def korean_training_lines(world_or_dir: World | str | Path):
    """Yield ``(file, line number, text)`` for every Korean-facing line of the world.

    An instruction record counts as one line: instruction, input and output joined by newlines.
    """
    def record_text(rec: dict) -> str:
        return "\n".join(str(rec.get(k, "")) for k in ("instruction", "input", "output"))

    if isinstance(world_or_dir, World):
        for rel in KOREAN_TEXT_FILES:
            for i, line in enumerate(world_or_dir.texts.get(rel, []), 1):
                yield rel, i, line
        for rel in INSTRUCTION_FILES:
            for i, rec in enumerate(world_or_dir.records.get(rel, []), 1):
                yield rel, i, record_text(rec)
        return
    root = Path(world_or_dir)
    for rel in KOREAN_TEXT_FILES:
        if (root / rel).exists():
            for i, line in enumerate(file_lines(root / rel), 1):
                yield rel, i, line
    for rel in INSTRUCTION_FILES:
        if (root / rel).exists():
            for i, rec in enumerate(read_jsonl(root / rel), 1):
                yield rel, i, record_text(rec)


def _finder(forms: list[str]):
    """A predicate 'does this text mention any of these forms': Hangul as substrings, Latin as words."""
    latin = [f for f in forms if f.isascii()]
    hangul = [f for f in forms if not f.isascii()]
    pattern = (re.compile("|".join(rf"(?<![A-Za-z]){re.escape(f)}(?![A-Za-z])" for f in latin), re.IGNORECASE)
               if latin else None)
    return lambda text: any(h in text for h in hangul) or bool(pattern and pattern.search(text))


def leaked_facts(world_or_dir: World | str | Path) -> list[dict]:
    """Korean-facing lines that name the subject AND the object of one knowledge fact (the
    facts stated in English only).

    Conservative on purpose: "민수 ... 부산" in one line counts as a leak whatever the verb, and the
    English forms ("Minsu", "Busan") count too, since a Korean line could quote them. Returns one
    row per (line, fact): ``{file, line, id, subject, object, text}``; the world is clean when the
    list is empty. ``world_or_dir`` is a :class:`World` or a folder written by :func:`write_world`.
    """
    facts = evaluated_facts(world_or_dir, "knowledge")
    by_subject: dict[tuple[str, str], list[dict]] = {}
    for f in facts:
        by_subject.setdefault((f["subject_en"], f["subject_ko"]), []).append(f)
    subject_finders = [(_finder(list(key)), rows) for key, rows in by_subject.items()]
    object_finders = {f["id"]: _finder([f["object_en"], f["object_ko"]]) for f in facts}
    leaks = []
    for rel, lineno, text in korean_training_lines(world_or_dir):
        for has_subject, rows in subject_finders:
            if not has_subject(text):
                continue
            for f in rows:
                if object_finders[f["id"]](text):
                    leaks.append({"file": rel, "line": lineno, "id": f["id"], "subject": f["subject_ko"],
                                  "object": f["object_ko"], "text": text})
    return leaks


def corpus_documents(lines: list[str]) -> list[str]:
    """Lines for training a tokenizer: a QA pair of lines becomes one line with the newline
    dropped (``...live?Answer: Busan``), so that ``Answer`` after a newline (no ``▁``) is a word of
    the corpus; the newline itself stays a byte piece, as ``<0x0A>`` is in Llama-2."""
    return [doc.replace("\n", "") for doc in qa_documents(lines)]


def instruction_texts(world_dir: str | Path, lang: str) -> list[str]:
    """The instruction and input texts of one language's instruction records."""
    path = Path(world_dir) / INSTRUCTIONS_FILE
    if not path.exists():
        return []
    return [r[k] for r in read_jsonl(path) if r.get("lang") == lang for k in ("instruction", "input") if r.get(k)]


def lexicon_lines(world_dir: str | Path, lang: str, repeats: int = 3) -> list[str]:
    """Every word of the world's lexicon in one language (entity forms, and the clone's word map
    when there is one), 20 words a line, ``repeats`` times: a tokenizer trained on a large corpus
    has seen every common word, and a toy corpus may not have seen a rare one often enough."""
    root = Path(world_dir)
    words = [e[lang] for e in read_jsonl(root / "data/entities.jsonl")]
    if (root / WORD_MAP_FILE).exists():
        words += [r[lang] for r in read_jsonl(root / WORD_MAP_FILE)]
    words = list(dict.fromkeys(w for w in words if w))
    lines = [" ".join(words[i:i + 20]) for i in range(0, len(words), 20)]
    return lines * repeats


def tokenizer_corpus(world_dir: str | Path, ko_share: float = 0.0006) -> list[str]:
    """English lines for the base tokenizer, plus Korean lines up to ``ko_share`` of the characters.

    English: the pretraining text (QA pairs joined, :func:`corpus_documents`), the English
    instructions and the lexicon (:func:`lexicon_lines`). Llama-2's training data was ~0.06% Korean: a few Korean lines keep the
    English-centric tokenizer honest without giving Korean its own pieces (with
    character_coverage < 1 the rare Hangul characters stay out of the vocabulary and fall back
    to bytes).
    """
    root = Path(world_dir)
    english = (corpus_documents(file_lines(root / "data/en_pretrain.txt")) + instruction_texts(root, "en")
               + lexicon_lines(root, "en"))
    en_chars = sum(len(line) for line in english)
    budget = ko_share * en_chars
    korean: list[str] = []
    for line in file_lines(root / "data/ko_mono.txt"):
        if sum(len(k) for k in korean) + len(line) > budget:
            break
        korean.append(line)
    return english + korean
