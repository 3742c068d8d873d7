"""Is any evaluated item in the training data? Word n-gram overlap between 07's paired tasks and
every file the run's stages trained on, in both languages.

    found = scan_run(run_dir, pairs)            # 07: the inputs recorded in each finished stage's config.json
    found = scan_profile(prof, run)             # python -m lib.pipeline contamination params/a6000.yaml
    pd.DataFrame(table(found))                  # per pair, language and field: items, overlapping, dirty

A text is compared as its words: NFKC, case-folded, letters and digits only (punctuation, spacing
and line breaks do not hide a copy). An item's question (and its context, such as a Belebele
passage) is *dirty* when at least :data:`DIRTY` of its words lie inside ``ngram``-word sequences
that also occur in the training text (the token-coverage rule of the Llama 2 report, on words); a
question shorter than ``ngram`` words is dirty only when it occurs whole. Options and answers are
not compared: an answer entity is meant to appear in training. Questions under
:data:`MIN_WORDS` words are too short to tell a copy from a coincidence and are counted apart.

What is read: the text files, JSONL corpora, instruction files and preference pairs of 03-06
(the keys in :data:`STAGE_INPUTS`, those a stage's settings make it train on) and, for the toy
world, every file its base model and stages train on. A local dataset folder
(``hub:/path//train``) is read; a Hub id is not (it is listed as not scanned): scan a local copy. The toy world guarantees zero by construction
(:mod:`lib.world.validity`); this scan is the same rule for real data.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from tqdm.auto import tqdm

from lib.core import paths
from lib.core.io import write_json, write_text
from lib.core.params import stage_params
from lib.data.corpus import DataError, load_rows, parse_corpus
from lib.eval.tasks import read_pair
from lib.eval.taskshape import lookup
from lib.world.files import TRAINING_FILES

NGRAM = 8                 # words per compared sequence (Korean: eojeol, a word with its particles)
MIN_WORDS = 3             # shorter questions are not compared
DIRTY = 0.5               # share of an item's words covered by shared n-grams that makes it dirty
MAX_EXAMPLES = 5          # dirty items listed per pair, language and field
WORD = re.compile(r"[^\W_]+")

# stage -> (key, kind, when): the inputs a stage trains on; ``when`` reads the stage's params
STAGE_INPUTS: dict[str, list[tuple[str, str, Callable[[Mapping], bool]]]] = {
    "03_stage1_contrastive": [("pairs_ko", "text", lambda p: True), ("pairs_en", "text", lambda p: True),
                              ("clm_text", "corpus", lambda p: p.get("clm_weight", 0) > 0)],
    "04_stage2_lm_head": [("text", "corpus", lambda p: True)],
    "05_stage3_pretrain": [("ko_text", "corpus", lambda p: True), ("en_text", "corpus", lambda p: True),
                           ("align_pairs_ko", "text", lambda p: p.get("align_weight", 0) > 0),
                           ("align_pairs_en", "text", lambda p: p.get("align_weight", 0) > 0)],
    "06_instruction_tuning": [("data_files", "instructions", lambda p: True),
                              ("parallel_file", "instructions", lambda p: p.get("parallel_share", 0) > 0
                               or (bool(p.get("dpo")) and p.get("dpo_pairs") == "consistency")),
                              ("align_pairs_ko", "text", lambda p: p.get("align_weight", 0) > 0),
                              ("align_pairs_en", "text", lambda p: p.get("align_weight", 0) > 0),
                              ("dpo_pairs", "preferences", lambda p: bool(p.get("dpo")) and p.get("dpo_pairs") not in ("toy", "consistency"))],
}


def words(text: str) -> list[str]:
    """The words a comparison sees: NFKC, case-folded, runs of letters and digits."""
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


# ---------------------------------------------------------------------------- the evaluated side


@dataclass
class Slot:
    """One field of one evaluated item in one language, and what of it training covers."""
    pair: str
    lang: str
    field: str                    # question | context
    item: str
    n_words: int
    covered: set[int] = field(default_factory=set)   # word positions inside a shared n-gram
    where: str | None = None      # the first training line that shares one

    @property
    def coverage(self) -> float:
        return len(self.covered) / self.n_words


class Index:
    """Every n-gram of every evaluated question and context, for a scan of training text."""

    def __init__(self, pairs: Mapping[str, Any], ngram: int = NGRAM, min_words: int = MIN_WORDS):
        if ngram < 2:
            raise ValueError(f"contamination ngram must be 2 or more words, got {ngram}")
        self.ngram, self.min_words = ngram, min_words
        self.slots: list[Slot] = []
        self.short: dict[tuple[str, str, str], int] = {}
        self.grams: dict[int, dict[str, list[tuple[int, int]]]] = {}   # length -> gram -> [(slot, pos)]
        self.starts: dict[int, set[str]] = {}    # length -> first words of its grams (a cheap filter)
        for name, pair in pairs.items():
            for lang, recs in pair.records.items():
                for fld in ("question", "context"):
                    path = getattr(pair.shape.shape, fld)
                    if not path:
                        continue
                    for rec in recs:
                        w = words(str(lookup(rec, path)))
                        if len(w) < min_words:
                            key = (name, lang, fld)
                            self.short[key] = self.short.get(key, 0) + 1
                            continue
                        s = len(self.slots)
                        self.slots.append(Slot(name, lang, fld, str(rec["id"]), len(w)))
                        n = min(ngram, len(w))
                        table = self.grams.setdefault(n, {})
                        starts = self.starts.setdefault(n, set())
                        for i in range(len(w) - n + 1):
                            table.setdefault(" ".join(w[i:i + n]), []).append((s, i))
                            starts.add(w[i])

    def feed(self, where: str, text: str) -> int:
        """Compare one training text; returns how many of its n-grams are evaluated ones."""
        w = words(text)
        hits = 0
        for n, table in self.grams.items():
            starts = self.starts[n]
            for i in range(len(w) - n + 1):
                if w[i] not in starts:
                    continue
                found = table.get(" ".join(w[i:i + n]))
                if not found:
                    continue
                hits += 1
                for s, pos in found:
                    slot = self.slots[s]
                    slot.covered.update(range(pos, pos + n))
                    if slot.where is None:
                        slot.where = where
        return hits


# ---------------------------------------------------------------------------- the training side


@dataclass
class Input:
    """One training input of one or more stages."""
    stages: list[str]
    key: str
    kind: str                     # text | corpus | instructions | preferences | toy
    spec: str                     # as given
    path: Path | None = None
    why_not: str | None = None    # set when it cannot be read here
    texts: int = 0
    hits: int = 0
    dataset: Any = None           # a local dataset folder's CorpusSource (``hub:/path//split``)


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{n}", line


def _jsonl_field(path: Path, fld: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rec = json.loads(line)
                if isinstance(rec, dict) and isinstance(rec.get(fld), str):
                    yield f"{path}:{n}", rec[fld]


def _strings(rec: Any) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, Mapping):
        return "\n".join(_strings(v) for v in rec.values())
    if isinstance(rec, (list, tuple)):
        return "\n".join(_strings(v) for v in rec)
    return ""


def _records(path: Path) -> Iterator[tuple[str, str]]:
    """Every string of every record of a JSON list or JSONL file (instructions, preference pairs)."""
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                yield f"{path}:{n}", _strings(json.loads(line))
        return
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    for i, rec in enumerate(data if isinstance(data, list) else [data]):
        yield f"{path}, record {i}", _strings(rec)


def _rows(src: Any) -> Iterator[tuple[str, str]]:
    for i, row in enumerate(load_rows(src, None)):
        yield f"{src.describe()}, row {i}", row["text"] or ""


def _texts(inp: Input, field_: str | None) -> Iterator[tuple[str, str]]:
    if inp.dataset is not None:
        return _rows(inp.dataset)
    if inp.kind in ("instructions", "preferences"):
        return _records(inp.path)
    if field_:
        return _jsonl_field(inp.path, field_)
    if inp.path.suffix == ".jsonl":
        return _records(inp.path)
    return _lines(inp.path)


def _add(inputs: dict[tuple[str, str], tuple[Input, str | None]], stage: str, key: str, kind: str,
         spec: str, run: str | Path) -> None:
    fld = None
    path: Path | None = None
    why, dataset = None, None
    if kind == "corpus":
        try:
            src = parse_corpus(spec, run)
        except DataError as e:
            why = str(e)
        else:
            if src.kind == "hub" and Path(src.dataset).is_dir():      # a local dataset folder
                path, dataset = Path(src.dataset), src
            elif src.kind == "hub":
                why = "a Hub dataset: not read here (scan a local copy of it)"
            else:
                path, fld = src.path, (src.field if src.kind == "jsonl" else None)
    else:
        path = paths.resolve_path(spec, run)
    if path is not None and dataset is None and not path.is_file():
        why, path = f"not found: {path}", None
    ident = (dataset.describe() if dataset else str(path) if path else spec, fld or "")
    if ident in inputs:
        inputs[ident][0].stages.append(stage)
        return
    inputs[ident] = (Input([stage], key, kind, spec, path, why, dataset=dataset), fld)


def stage_inputs(stage_params: Mapping[str, Mapping], run: str | Path) -> list[tuple[Input, str | None]]:
    """The training inputs of the given stages (``{stage: params}``), each file once."""
    inputs: dict[tuple[str, str], tuple[Input, str | None]] = {}
    for stage, params in sorted(stage_params.items()):
        if stage == paths.TOY_STAGE:
            for rel in TRAINING_FILES:
                kind = "instructions" if rel.endswith(".jsonl") else "text"
                _add(inputs, stage, rel, kind, str(paths.stage_dir(run, stage) / rel), run)
            continue
        for key, kind, when in STAGE_INPUTS.get(stage, []):
            if key not in params or not when(params):
                continue
            values = params[key] if isinstance(params[key], list) else [params[key]]
            for v in values:
                _add(inputs, stage, key, kind, str(v), run)
    return list(inputs.values())


# ---------------------------------------------------------------------------- scans


def scan(pairs: Mapping[str, Any], inputs: list[tuple[Input, str | None]], ngram: int = NGRAM,
         progress: bool = True) -> dict[str, Any]:
    """Compare every input with every pair; the result is what :func:`table` and 07 show."""
    index = Index(pairs, ngram)
    for inp, fld in tqdm(inputs, desc="contamination", unit="file", disable=not progress):
        if inp.path is None:
            continue
        try:
            for where, text in _texts(inp, fld):
                inp.texts += 1
                inp.hits += index.feed(where, text)
        except (OSError, ValueError) as e:      # json and DataErrors are ValueErrors: the stage's own check names them
            inp.why_not = f"not read ({e})"
    return summarise(index, [i for i, _ in inputs])


def summarise(index: Index, inputs: list[Input]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in index.slots:
        g = groups.setdefault((s.pair, s.lang, s.field), {"pair": s.pair, "lang": s.lang, "field": s.field,
                                                          "compared": 0, "overlapping": 0, "dirty": 0,
                                                          "dirty_items": [], "examples": []})
        g["compared"] += 1
        g["overlapping"] += bool(s.covered)
        if s.coverage >= DIRTY:
            g["dirty"] += 1
            g["dirty_items"].append(s.item)
            if len(g["examples"]) < MAX_EXAMPLES:
                g["examples"].append({"item": s.item, "coverage": round(s.coverage, 3), "where": s.where})
    for (pair, lang, fld), n in index.short.items():
        g = groups.setdefault((pair, lang, fld), {"pair": pair, "lang": lang, "field": fld, "compared": 0,
                                                  "overlapping": 0, "dirty": 0, "dirty_items": [], "examples": []})
        g["too_short"] = n
    by_pair: dict[str, set[str]] = {}
    for g in groups.values():
        g.setdefault("too_short", 0)
        g["items"] = g["compared"] + g["too_short"]
        by_pair.setdefault(g["pair"], set()).update(g["dirty_items"])
    return {"ngram": index.ngram, "min_words": index.min_words, "dirty_share": DIRTY,
            "groups": sorted(groups.values(), key=lambda g: (g["pair"], g["field"], g["lang"])),
            "dirty_items": {p: sorted(v) for p, v in sorted(by_pair.items())},
            "inputs": [{"stages": i.stages, "key": i.key, "kind": i.kind, "file": str(i.path) if i.path else i.spec,
                        "texts": i.texts, "shared_ngrams": i.hits, "not_scanned": i.why_not} for i in inputs]}


def table(found: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per pair, field and language: items compared, overlapping at all, dirty."""
    return [{"pair": g["pair"], "field": g["field"], "lang": g["lang"], "items": g["items"],
             "too_short": g["too_short"], f"sharing an {found['ngram']}-gram": g["overlapping"],
             "dirty": g["dirty"], "example": (f"{g['examples'][0]['item']} ({g['examples'][0]['coverage']:.0%}) "
                                              f"at {g['examples'][0]['where']}" if g["examples"] else "")}
            for g in found["groups"]]


def not_scanned(found: Mapping[str, Any]) -> list[str]:
    return [f"{', '.join(i['stages'])}.{i['key']}: {i['file']}: {i['not_scanned']}"
            for i in found["inputs"] if i["not_scanned"]]


def n_dirty(found: Mapping[str, Any]) -> int:
    """Items dirty in either language (per pair, an item counts once)."""
    return sum(len(v) for v in found["dirty_items"].values())


def _recorded_params(run_dir: Path) -> dict[str, dict]:
    """``{stage: params}`` of the run's finished stages, as their config.json recorded them."""
    out = {}
    for stage in paths.stages():
        sd = run_dir / stage
        if (sd / "DONE").exists() and (sd / "config.json").is_file():
            out[stage] = json.loads((sd / "config.json").read_text(encoding="utf-8")).get("params", {})
    return out


def scan_run(run_dir: str | Path, pairs: Mapping[str, Any], ngram: int = NGRAM, progress: bool = True) -> dict[str, Any]:
    """07: every training input of this run's finished stages against its pairs."""
    run_dir = Path(run_dir)
    params = _recorded_params(run_dir)
    found = scan(pairs, stage_inputs(params, run_dir), ngram, progress)
    found["stages"] = sorted(params)
    return found


def scan_profile(prof: Any, run: str | Path | None = None, ngram: int = NGRAM, progress: bool = True) -> dict[str, Any]:
    """Before any run: the inputs the profile gives 03-06 (and the toy world's, once built)
    against the pairs of its 07 section."""
    run = str(run or prof.name)
    stages = [s for s in paths.stages() if s[:2] not in prof.skipped() and (s in STAGE_INPUTS or (
        s == paths.TOY_STAGE and prof.common().get("base_model", "toy") == "toy"))]   # what the run trains on
    params = {s: stage_params(prof, s, run) for s in stages}
    pairs, unread = {}, []
    for name, spec in stage_params(prof, "07_benchmark_eval", run)["tasks"].items():
        try:
            pairs[name] = read_pair(name, spec, run)
        except Exception as e:                    # a Hub task offline, a file not built yet
            unread.append(f"07_benchmark_eval.tasks.{name}: not read ({type(e).__name__}: {str(e)[:200]})")
    found = scan(pairs, stage_inputs(params, run), ngram, progress)
    found["stages"], found["pairs_not_read"] = stages, unread
    return found


def render(found: Mapping[str, Any]) -> str:
    """The scan as Markdown: the table, what was not scanned, and the files read."""
    rows = table(found)
    cols = list(rows[0]) if rows else []
    out = [f"Evaluated items whose words are at least {found['dirty_share']:.0%} inside {found['ngram']}-word "
           f"sequences of the training data (dirty), per pair, field and language; "
           f"{n_dirty(found)} dirty item(s) in all.", ""]
    if rows:
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    out += ["", f"Read: {sum(i['texts'] for i in found['inputs']):,} training texts in "
                f"{sum(not i['not_scanned'] for i in found['inputs'])} file(s)."]
    out += [f"Not scanned: {x}" for x in not_scanned(found) + found.get("pairs_not_read", [])]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- 07 writes, 08 reads

FILE = "contamination.json"


def write(found: Mapping[str, Any], stage_dir: str | Path) -> None:
    """``contamination.json`` (everything) and ``contamination.md`` (:func:`render`) in 07's folder."""
    write_json(Path(stage_dir) / FILE, found)
    write_text(Path(stage_dir) / "contamination.md", render(found))


def summary(found: Mapping[str, Any]) -> dict[str, Any]:
    """What 07's metrics.json keeps: dirty items per pair, and what was not scanned."""
    return {"ngram": found["ngram"], "dirty_items": n_dirty(found),
            "dirty_by_pair": {p: len(v) for p, v in found["dirty_items"].items()},
            "not_scanned": not_scanned(found) + list(found.get("pairs_not_read", []))}


def load_dirty(run_dir: str | Path) -> dict[str, set[str]]:
    """``{pair: ids}`` of the dirty items 07 found in this run ({} when it did not scan)."""
    path = paths.stage_dir(run_dir, "07_benchmark_eval") / FILE
    if not path.is_file():
        return {}
    return {p: set(ids) for p, ids in json.loads(path.read_text(encoding="utf-8"))["dirty_items"].items() if ids}


def clean_items(items: Mapping[tuple[str, str, str], list[dict]], dirty: Mapping[str, set[str]], run: str
                ) -> dict[tuple[str, str, str], list[dict]]:
    """08's per-item predictions (``{(run, model, task): items}``) of this run's tasks with dirty
    items, those items left out (compared runs trained on other files: they are not filtered)."""
    return {k: [it for it in its if str(it["id"]) not in dirty[k[2]]]
            for k, its in items.items() if k[0] == run and k[2] in dirty}


def clean_rows(full: list[Mapping], clean: list[Mapping]) -> list[dict[str, Any]]:
    """Per model and affected task: the paired metrics on every item next to those without the dirty ones."""
    by_key = {(r["run"], r["model"], r["task"]): r for r in full}
    out = []
    for r in clean:
        f = by_key[(r["run"], r["model"], r["task"])]
        row = {"run": r["run"], "model": r["model"], "task": r["task"], "n": f["n"], "n_clean": r["n"]}
        for m in ("acc_en", "acc_ko", "agreement", "kappa"):
            row[m], row[f"{m}_clean"] = f[m], r[m]
        out.append(row)
    return out
