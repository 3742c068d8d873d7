"""The input rules of ``check``: a stage's files exist, read with the stage's own reader and are
in the right language; models are ``toy``, a folder or a Hub id; 01's tokenizers merge; 06's
records and pairs read; 07's tasks pair up. Each problem is one line naming file:line, the key and
what to do (:class:`StageInputs`).

Files under ``{toy}`` (or ``{run}``) that an earlier stage of the same run will write are not
checked before that stage has run.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from lib.core import paths
from lib.core.params import Profile, notebook_params, stage_params
from lib.core.readers import DataError, read_lines, read_parallel
from lib.core.sources import is_hub
from lib.core.stage import Config
from lib.data.corpus import parse_corpus
from lib.data.instructions import detect_lang, hangul_share, load_instructions, read_records
from lib.data.parallel import read_parallel as read_parallel_instructions
from lib.data.preferences import read_pairs as read_preference_pairs
from lib.data.wordpairs import read_pairs as read_word_pairs
from lib.eval import extratasks as XT
from lib.eval import tasks as ET
from lib.eval import toyextra
from lib.run.checksources import dataset_problem, model_problem, relative_or_none, shared_stages
from lib.train import contrastive, pretrain
from lib.vocab import merge as T

SAMPLE_LINES = 200          # lines read to tell Korean from English (and to spot bad encodings)
LANG_OF = {"text": "ko", "clm_text": "ko", "korean_corpus": "ko"}
CORPUS_KEYS = ("text", "clm_text", "ko_text", "en_text")     # lib.data.corpus.parse_corpus forms
PARALLEL = {"03_stage1_contrastive": [("pairs_ko", "pairs_en"), ("heldout_ko", "heldout_en")],
            "08_agreement_analysis": [("heldout_ko", "heldout_en")]}
TEXT_FILES = {"01_vocab_merge": ["sample_ko", "sample_en"],
              "02_embedding_init": ["sample_ko", "sample_en"],
              "03_stage1_contrastive": [],
              "04_stage2_lm_head": ["text", "heldout_ko", "heldout_en"],
              "05_stage3_pretrain": ["ko_text", "en_text", "heldout_ko", "heldout_en"]}


def where_of(prof: Profile, stage: str, key: str) -> str:
    """``file:line: stage.key`` of the value a stage gets from its section or the default."""
    section = prof.sections.get(stage, {})
    if key in section:
        return f"{prof.where(stage, key)}: {stage}.{key}"
    composed = [key + op for op in "+-" if key + op in section]     # tasks+ / tasks- (lib.core.params.compose)
    if composed:
        return f"{prof.where(stage, composed[0])}: {stage}.{composed[0]}"
    default = notebook_params(stage)[key].default
    return f"{prof.path}: {stage}.{key} (not set: the notebook's default {default!r})"


class StageInputs:
    """One stage's values and how to report on them."""

    def __init__(self, prof: Profile, stage: str, run: str, planned: list[str], problems: list[str],
                 common: dict[tuple[str, str], tuple[int, list[str]]]):
        self.prof, self.stage, self.run, self.planned, self.problems = prof, stage, run, planned, problems
        self.common = common        # (key, message) -> (index in problems, stages): one line per value
        self.values = stage_params(prof, stage, run, problems=[])   # types: reported already
        self.cfg = Config(self.values, _stage=stage)
        self.found = 0              # problems of this stage so far
        self.shared = shared_stages(prof)

    def problem(self, key: str, msg: str) -> None:
        self.found += 1
        if key in self.prof.sections.get(self.stage, {}) or key not in self.prof.common():
            self.problems.append(f"{where_of(self.prof, self.stage, key)}: {msg}")
            return
        # a value from common: reported once, naming every stage that takes it
        i, stages = self.common.setdefault((key, msg), (len(self.problems), []))
        stages.append(self.stage)
        line = f"{self.prof.where('common', key)}: common.{key} (for {', '.join(stages)}): {msg}"
        if i == len(self.problems):
            self.problems.append(line)
        else:
            self.problems[i] = line

    def toy_profile(self) -> bool:
        return self.prof.common().get("base_model", "toy") == "toy"

    def present(self, stage: str) -> bool:
        """Will ``stage``'s folder be there when this stage runs: it runs earlier in this run, has
        finished in this run, or is shared (``pipeline.share``) from a run that finished it."""
        return ((stage in self.planned and stage <= self.stage) or stage in self.shared
                or (paths.stage_dir(self.run, stage) / "DONE").exists())

    def locate(self, value: str) -> Path:
        """The path of a parameter; one inside a shared stage's folder (linked when the run starts)
        is looked for in the run it is shared from."""
        path = paths.resolve_path(value, self.run)
        if path.exists():
            return path
        for stage, src in self.shared.items():
            rel = relative_or_none(path, paths.stage_dir(self.run, stage))
            if rel is not None:
                return src / rel
        return path

    def base_model_wrong(self) -> bool:
        """Is common's base_model a spec that names nothing? Then it is reported on its own line,
        and what its typo leaves unbuilt (00's ``{toy}`` files, models and tasks) is not listed again."""
        spec = self.prof.common().get("base_model", "toy")
        return isinstance(spec, str) and spec != "toy" and model_problem(spec, self.run) is not None

    def made_later(self, value: str) -> bool:
        """Does an earlier stage of this run write this path (so it cannot exist yet)?"""
        earlier = [s for s in self.planned if s < self.stage]
        if "{toy}" in value:
            return paths.TOY_STAGE in earlier
        return "{run}" in value and bool(earlier)

    def file(self, key: str, value: str | None = None) -> Path | None:
        """The path of a file parameter when it can be checked now; a missing one is a problem."""
        value = self.values[key] if value is None else value
        path = self.locate(value)
        if path.exists():
            if not path.is_file():
                self.problem(key, f"{path} is a folder, not a file")
                return None
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                self.problem(key, f"{path} cannot be read ({e.strerror}); fix its permissions")
                return None
            return path
        if self.made_later(value):
            return None
        if "{toy}" in value and self.base_model_wrong():
            return None                     # the base_model line says why 00 is not built
        hint = ""
        if "{toy}" in value and paths.TOY_STAGE in self.shared:
            hint = f"; {{toy}} is shared (pipeline.share) from {self.shared[paths.TOY_STAGE]}, which lacks it"
        elif "{toy}" in value and paths.TOY_STAGE not in self.planned:
            hint = f"; {{toy}} is the folder of {paths.TOY_STAGE}, " + (
                f"which has not run in this run yet: run it first" if self.toy_profile() else
                f"which this run does not build (base_model is not toy): set {self.stage}.{key} "
                f"to a file of yours")
        given = f" (from {value!r})" if value != str(path) else ""
        self.problem(key, f"file not found: {path}{given}{hint}")
        return None

    def lang(self, key: str, path: Path, want: str, text: str) -> None:
        """A Korean side must read as Korean and an English one as English, by the rule 06 uses
        for records without a language (the Hangul share of the letters against a threshold)."""
        if detect_lang(text) == want:
            return
        threshold = inspect.signature(detect_lang).parameters["threshold"].default
        side = {"ko": "Korean", "en": "English"}
        self.problem(key, f"{path} should be {side[want]} but reads as {side[detect_lang(text)]} "
                          f"(Hangul is {hangul_share(text):.0%} of its letters; a Korean side needs "
                          f"{threshold:.0%} or more): are the Korean and English files swapped?")

    def text(self, key: str, want: str) -> list[str] | None:
        """A text file with one document or sentence a line, in language ``want``; for a corpus
        parameter also a JSONL file (its records' text field) or a Hub split (its form, and that it
        can be had: :func:`lib.run.checksources.dataset_problem`)."""
        if key in CORPUS_KEYS:
            try:
                src = parse_corpus(self.values[key], self.run)
            except DataError as e:
                self.problem(key, str(e))
                return None
            if src.kind == "hub":
                msg = dataset_problem(self.values[key], self.run)
                if msg:
                    self.problem(key, msg)
                return None
            if src.kind == "jsonl":
                path = self.file(key, str(src.path))
                if path is None:
                    return None
                try:
                    lines = jsonl_texts(path, src.field, SAMPLE_LINES)
                except DataError as e:
                    self.problem(key, str(e))
                    return None
                self.lang(key, path, want, "\n".join(lines))
                return lines
        path = self.file(key)
        if path is None:
            return None
        try:
            lines = read_lines(path, limit=SAMPLE_LINES)
        except DataError as e:
            self.problem(key, str(e))
            return None
        self.lang(key, path, want, "\n".join(lines))
        return lines

    def parallel(self, ko_key: str, en_key: str) -> None:
        ko, en = self.text(ko_key, "ko"), self.text(en_key, "en")
        if ko is None or en is None:
            return
        try:
            read_parallel(self.file(ko_key), self.file(en_key))
        except DataError as e:
            self.problem(ko_key, str(e))

    def model(self, key: str, value: str) -> None:
        """A model spec: ``toy``, a local folder, or a Hub id (not reachable from here)."""
        if value == "toy":
            if not self.present(paths.TOY_STAGE) and not self.base_model_wrong():
                self.problem(key, f"'toy' is the model {paths.TOY_STAGE} builds, and it has not run in "
                                  f"this run yet: " + ("run it first" if self.toy_profile() else
                                                       "give a model, or set base_model: toy in common"))
            return
        if self.locate(value).exists() or self.made_later(value):
            return
        msg = model_problem(value, self.run)
        if msg:
            self.problem(key, msg)


def tokenizers(st: StageInputs) -> None:
    v = st.values
    if not v["korean_tokenizer"] and not v["korean_corpus"]:
        st.problem("korean_tokenizer", "is empty and so is korean_corpus: give a Korean SentencePiece "
                                       ".model, or a Korean text file to train one on")
        return
    base_key = "base_tokenizer" if v["base_tokenizer"] else "base_model"
    base_spec = v[base_key]
    protos = {}
    for key, spec in ((base_key, base_spec), ("korean_tokenizer", v["korean_tokenizer"])):
        if not spec or spec == "toy" or st.made_later(spec):
            continue
        path = st.locate(spec)
        if not path.exists():
            if "{toy}" in spec and st.base_model_wrong():
                continue
            if key == "korean_tokenizer" or T.looks_like_path(spec) or "{" in spec:
                given = f" (from {spec!r})" if spec != str(path) else ""
                st.problem(key, f"file not found: {path}{given}")
            continue            # a Hub id: not reachable from here
        try:
            protos[key] = (path, T.load_sp_model(path))
        except (ValueError, FileNotFoundError) as e:
            if key != "base_model":          # a model folder may hold only tokenizer.json
                st.problem(key, str(e))
    if not v["korean_tokenizer"]:
        st.text("korean_corpus", "ko")
    if len(protos) == 2 and v["merge_mode"] in T.MERGE_MODES:
        (bpath, base), (kpath, ko) = protos[base_key], protos["korean_tokenizer"]
        try:
            T.merge_sp(base, ko, mode=v["merge_mode"], names=(str(bpath), str(kpath)))
        except ValueError as e:
            st.problem("korean_tokenizer", str(e))


def instructions(st: StageInputs) -> None:
    files = []
    for f in st.values["data_files"]:
        path = st.file("data_files", f)
        if path is None:
            continue
        try:
            read_records(path)
        except (ValueError, FileNotFoundError) as e:
            st.problem("data_files", str(e))
            continue
        files.append(path)
    if files and len(files) == len(st.values["data_files"]):
        try:
            load_instructions(files, st.values["languages"], st.values["max_examples"])
        except ValueError as e:
            st.problem("languages", str(e))
    for key in ("chat_vector_base", "chat_vector_instruct"):
        if st.values[key]:
            st.model(key, st.values[key])
    if st.values["dpo"]:
        preference_pairs(st)


def preference_pairs(st: StageInputs) -> None:
    """06's ``dpo_pairs``: the toy world's (only where 00 builds one) or a readable JSONL file."""
    value = st.values["dpo_pairs"]
    if value == "consistency":
        st.file("entities_file")                   # the parallel file: parallel_instructions
        return
    if value == "toy":
        if not st.toy_profile() and not st.base_model_wrong():
            st.problem("dpo_pairs", "'toy' builds pairs from the toy world, which this run does not build "
                                    "(base_model is not toy): set it to a JSONL of prompt, chosen, rejected")
        return
    read_checked(st, "dpo_pairs", read_preference_pairs)


def parallel_instructions(st: StageInputs) -> None:
    """06's ``parallel_file`` (for ``parallel_share`` or consistency pairs): items of one English
    and one Korean record (lib.data.parallel.read_parallel)."""
    read_checked(st, "parallel_file", read_parallel_instructions)


def read_checked(st: StageInputs, key: str, reader) -> None:
    """Read the file of ``key`` with ``reader`` when it can be checked now; its error is the problem."""
    path = st.file(key)
    if path is None:
        return
    try:
        reader(path)
    except (ValueError, FileNotFoundError) as e:
        st.problem(key, str(e))


def record_text(rec: Any) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        return " ".join(record_text(v) for k, v in rec.items() if k not in ("id", "link", "dialect"))
    if isinstance(rec, (list, tuple)):
        return " ".join(record_text(v) for v in rec)
    return ""


def tasks(st: StageInputs) -> None:
    tasks = st.values["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        st.problem("tasks", "must name at least one pair {name: {en: ..., ko: ..., format: ...}}, "
                            f"got {tasks!r}")
        return
    for name, spec in tasks.items():
        try:
            ET.check_spec(str(name), spec)
        except ET.PairError as e:
            st.problem("tasks", str(e))
            continue
        local = 0
        for lang in ET.LANGS:
            value = spec[lang]
            if is_hub(value):
                try:
                    ET.parse_source(value, st.run, where=f"tasks['{name}']['{lang}']")
                except ET.PairError as e:
                    st.problem("tasks", str(e))
                    continue
                msg = dataset_problem(value, st.run)
                if msg:
                    st.problem("tasks", f"tasks['{name}']['{lang}']: {msg}")
                continue
            if not isinstance(value, str) or not value.strip():
                st.problem("tasks", f"tasks['{name}']['{lang}'] must be a file path or "
                                    f"hub:<dataset>/<config>/<split>, got {value!r}")
            elif st.file("tasks", value) is not None:
                local += 1
        if local < 2:
            continue
        try:      # the files where they are now (a shared stage's: in the run it is shared from)
            located = {**spec, **{lang: str(st.locate(spec[lang])) for lang in ET.LANGS}}
            pair = ET.read_pair(str(name), located, st.run)
        except ET.PairError as e:
            st.problem("tasks", str(e))
            continue
        for lang in ET.LANGS:
            text = "\n".join(record_text(r) for r in pair.records[lang][:SAMPLE_LINES])
            st.lang("tasks", pair.sources[lang].path, lang, text)


def extra_tasks(st: StageInputs) -> None:
    """07's extra tasks: local YAMLs exist and name a task, toy tasks have a toy world, and names
    are in lm-eval's default index (built, ~12 s, only when some entry is a name)."""
    try:
        items = XT.entries(st.values["extra_tasks"])
    except XT.ExtraTaskError:
        return                              # reported by the value rule
    names, known, unread = [], {spec for _, spec in items}, False
    for lang, spec in items:
        kind = XT.kind_of(spec)
        if kind == "name":
            names.append(spec)
        elif kind == "toy":
            known.add(toyextra.task_name(toyextra.check_name(spec)))
            if not st.present(paths.TOY_STAGE) and not st.base_model_wrong():
                st.problem("extra_tasks", f"{spec!r} is built from {paths.TOY_STAGE}'s files, and this run "
                                          "has none: " + ("run 00 first" if st.toy_profile() else
                                                          "leave toy: tasks out of a real model's profile"))
        elif (path := st.file("extra_tasks", spec)) is None:
            unread = True
        else:
            try:
                known.add(XT.yaml_task_name(path))
            except XT.ExtraTaskError as e:
                st.problem("extra_tasks", str(e))
    if names:
        unknown = XT.unknown_names(names)
        if unknown:
            st.problem("extra_tasks", f"{', '.join(map(repr, unknown))} not in lm-eval's task index "
                                      f"(lm_eval {XT.lm_eval_version()}): check the spelling (`lm_eval ls "
                                      "tasks`) or give the path of a task YAML")
    stray = [] if unread else [k for k in st.values["extra_metric"] if k not in known]
    if stray:
        st.problem("extra_metric", f"names {stray}, which are not in extra_tasks")


def oracle_needs_a_clone(st: StageInputs) -> None:
    """02's oracle init and controls need 00's word map, which only the clone styles write."""
    wants = st.values.get("controls") or st.values.get("init") in ("oracle", "oracle_deranged")
    if not wants or paths.TOY_STAGE not in st.planned:
        return
    style = stage_params(st.prof, paths.TOY_STAGE, st.run, problems=[]).get("korean_style")
    if style == "toy":
        key = "controls" if st.values.get("controls") else "init"
        st.problem(key, "the oracle controls need a word map, which 00_toy_world writes only for "
                        "korean_style clone or clone_sov (this profile has toy): set controls: [] "
                        "and an ordinary init, or change korean_style")


def word_pairs(st: StageInputs) -> None:
    """The word-pair file of the word-level objective, align_head and code-switching."""
    path = st.file("word_pairs")
    if path is None:
        return
    try:
        read_word_pairs(path)
    except ValueError as e:
        st.problem("word_pairs", str(e))


def stage_validators(st: StageInputs) -> None:
    """The stages' own whole-config checks (run only when every value passed on its own)."""
    if st.stage == "02_embedding_init":
        oracle_needs_a_clone(st)
    checks = {"03_stage1_contrastive": (contrastive.check_config, None),
              "05_stage3_pretrain": (pretrain.check_method, "method"),
              "06_instruction_tuning": (pretrain.check_method, "method")}
    if st.stage in checks:
        fn, key = checks[st.stage]
        try:
            fn(st.cfg)
        except (ValueError, RuntimeError) as e:
            if key:
                st.problem(key, str(e))
            else:
                st.problems.append(f"{st.prof.path}: {st.stage}: {e}")


def jsonl_texts(path: Path, field: str, limit: int) -> list[str]:
    """The ``field`` strings of the first ``limit`` records of a JSONL corpus; a bad record is named."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}, line {n}: not a UTF-8 JSON record ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise DataError(f"{path}, line {n}: a record needs a string field {field!r} "
                                f"(name another field after '#': {path.name}#<field>)")
            out.append(rec[field])
            if len(out) >= limit:
                break
    if not out:
        raise DataError(f"{path}: no records")
    return out
def lang_of(key: str) -> str:
    if key in LANG_OF:
        return LANG_OF[key]
    return "ko" if re.search(r"(^|_)ko($|_)", key) else "en"
