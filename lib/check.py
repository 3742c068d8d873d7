"""Everything about a profile that can be checked before anything runs, listed all at once.

    python -m lib.pipeline check params/a6000.yaml     # what `run` also does first
    problems = check_profile(load_profile("params/toy.yaml"), ["01_vocab_merge"])   # [] when fine

On top of :func:`lib.params.profile_problems` (unknown keys, types) it checks values (finite
numbers, ranges, enums such as ``device``, ``pooling``, ``method``, ``init``, ``merge_mode``), the
07 ``tasks`` spec, the tokenizer-or-corpus rule of 01, and every input file: it exists and reads
with the stage's own reader, parallel files have equal line counts, JSONL records have their
fields, and a Korean side reads as Korean and an English side as English (a swap is caught).
Enums and record checks are the stages' own constants and functions, so a value a stage learns
later is accepted here too. Each problem is one line: ``file:line: stage.key: what, what to do``.

Files under ``{toy}`` (or ``{run}``) that an earlier stage of the same run will write are not
checked before that stage has run.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from lib import paths
from lib.params import Config, Profile, notebook_params, profile_problems, stage_params

SAMPLE_LINES = 200          # lines read to tell Korean from English (and to spot bad encodings)
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


# ---------------------------------------------------------------------------- values

def _enum(module: str, name: str) -> Callable[[Any], str | None]:
    """A rule: the value must be one of the stage's own constant ``module.name`` (read at check
    time, so values added to it later are accepted without touching this file)."""
    def rule(value: Any) -> str | None:
        allowed = tuple(getattr(importlib.import_module(module), name))
        return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}, got {value!r}"
    return rule


def _enum_of(value: Any, module: str, fn: str) -> str | None:
    """Like :func:`_enum`, with the allowed values from a function of the stage's module."""
    allowed = tuple(getattr(importlib.import_module(module), fn)())
    return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}, got {value!r}"


def _raises(fn: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """A rule from a stage's own validator: its ValueError message is the problem."""
    def rule(value: Any) -> str | None:
        try:
            fn(value)
        except ValueError as e:
            return str(e)
        return None
    return rule


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        bad = ((lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if not bad:
            return None
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        return f"must be {' and '.join(s for s in (left, right) if s)}, got {value!r}"
    return rule


def _device(value: Any) -> str | None:
    import torch
    if value == "auto":
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        return f"must be auto, cpu, cuda or cuda:N, got {value!r}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        from lib.model import cuda_missing_message
        return f"is {value!r}, but torch sees no GPU: {cuda_missing_message(str(value)).split(': ', 1)[1]}"
    return None


def _train_spec(field: str) -> Callable[[Any], str | None]:
    """A rule from the training loop's own TrainSpec validation of one field."""
    def build(value: Any) -> None:
        from lib.train.loop import TrainSpec
        TrainSpec(**{"steps": 1, field: value})
    return _raises(build)


def _block_size(value: Any) -> None:
    from lib.packing import _check_block_size
    _check_block_size(value)


def _prediction(value: Any) -> None:
    from lib.analysis import _check_prediction
    _check_prediction(value)


AT_LEAST_1 = _range(1)
NON_NEGATIVE = _range(0)
POSITIVE = _range(0, lo_open=True)
SHARE = _range(0, 1)

KEY_RULES: dict[str, Callable[[Any], str | None]] = {
    "contamination_ngram": lambda v: None if v == 0 or (isinstance(v, int) and v >= 2) else
    f"must be 0 (no scan) or 2 or more words, got {v!r}",
    "device": _device,
    "precision": _enum("lib.model", "PRECISIONS"),
    "init": lambda v: _enum_of(v, "lib.oracle", "all_inits"),
    "controls": _raises(lambda v: importlib.import_module("lib.oracle").check_controls(v)),
    "oracle_alpha": _range(0, 1),
    "korean_style": _enum("lib.toyworld.clone", "STYLES"),
    "korean_model_type": _enum("lib.toymodel", "KOREAN_MODEL_TYPES"),
    "joint_korean_share": _range(0, 1, hi_open=True),
    "heldout_relations": _range(1),
    "ko_paraphrases": _range(1, 5), "en_paraphrases": _range(1, 5), "bridge_paraphrases": _range(1, 5),
    "train_rows": _enum("lib.train.head", "TRAIN_ROWS"),
    "objective": _enum("lib.train.align_terms", "OBJECTIVES"),
    "layers": _raises(lambda v: importlib.import_module("lib.train.align_terms").check_layers(v)),
    "code_switch_ratio": _range(0, 1),
    "merge_mode": _enum("lib.tokenizer", "MERGE_MODES"),
    "pooling": _enum("lib.represent", "POOLING_MODES"),
    "english_encoder": _enum("lib.train.contrastive", "ENGLISH_ENCODERS"),
    "method": _enum("lib.train.pretrain", "METHODS"),
    "chat_vector_when": _enum("lib.train.sft", "CHAT_VECTOR_WHEN"),
    "chat_vector_rows": _enum("lib.chatvector", "ROWS_POLICIES"),
    "dpo_method": _enum("lib.train.dpo", "DPO_METHODS"),
    "dpo_beta": _range(0, lo_open=True), "dpo_lr": _range(0, lo_open=True), "dpo_heldout": _range(0, 1, hi_open=True),
    "dpo_batch_size": _range(1), "dpo_grad_accum": _range(1), "dpo_steps": _range(1),
    "prediction": _raises(_prediction),
    "extra_tasks": _raises(lambda v: importlib.import_module("lib.extratasks").check(v)),
    "extra_metric": _raises(lambda v: importlib.import_module("lib.extratasks").check_metrics(v)),
    "schedule": _train_spec("schedule"),
    "report_to": _train_spec("report_to"),
    "steps": _train_spec("steps"),
    "grad_accum": _train_spec("grad_accum"),
    "block_size": _raises(_block_size),
    "lr": POSITIVE, "layer_weights_lr": POSITIVE, "temperature": POSITIVE, "align_temperature": POSITIVE, "lora_alpha": POSITIVE,
    "ko_ratio": SHARE, "ko_share": SHARE, "min_lr_ratio": SHARE, "lora_dropout": _range(0, 1, hi_open=True),
    "batch_size": AT_LEAST_1, "align_batch_size": _range(2), "max_len": AT_LEAST_1, "align_max_len": AT_LEAST_1, "clm_block": AT_LEAST_1, "seq_len": AT_LEAST_1,
    "lora_r": AT_LEAST_1, "korean_vocab_size": AT_LEAST_1, "max_new_tokens": AT_LEAST_1,
    "max_models_in_grid": AT_LEAST_1, "hidden_size": AT_LEAST_1, "intermediate_size": AT_LEAST_1,
    "num_layers": AT_LEAST_1, "num_heads": AT_LEAST_1,
}
# counts, cadences and weights where 0 means "off" or "all"
for _k in ("warmup_steps", "save_every", "eval_every", "max_pairs", "eval_pairs", "max_sample_lines",
           "max_eval_lines", "eval_lines_during", "clm_weight", "weight_decay", "max_grad_norm",
           "group_by_length", "align_weight", "n_boot", "rep_pairs", "limit", "num_fewshot", "max_examples",
           "eval_examples", "match_examples", "umap_pairs_linked", "num_threads", "base_vocab_size",
           "qa_repeats", "model_seed", "seed", "dpo_max_pairs", "dpo_warmup_steps", "dpo_eval_every",
           "dpo_save_every"):
    KEY_RULES[_k] = NON_NEGATIVE


def _value_problem(key: str, value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    rule = KEY_RULES.get(key) or (NON_NEGATIVE if key.startswith("n_") else None)
    return rule(value) if rule else None


# ---------------------------------------------------------------------------- where

def _where(prof: Profile, stage: str, key: str) -> str:
    """``file:line: stage.key`` of the value a stage gets from its section or the default."""
    if key in prof.sections.get(stage, {}):
        return f"{prof.where(stage, key)}: {stage}.{key}"
    default = notebook_params(stage)[key].default
    return f"{prof.path}: {stage}.{key} (not set: the notebook's default {default!r})"


# ---------------------------------------------------------------------------- files

class _Stage:
    """One stage's values and how to report on them."""

    def __init__(self, prof: Profile, stage: str, run: str, planned: list[str], problems: list[str],
                 common: dict[tuple[str, str], tuple[int, list[str]]]):
        self.prof, self.stage, self.run, self.planned, self.problems = prof, stage, run, planned, problems
        self.common = common        # (key, message) -> (index in problems, stages): one line per value
        self.values = stage_params(prof, stage, run, problems=[])   # types: reported already
        self.cfg = Config(self.values, _stage=stage)
        self.found = 0              # problems of this stage so far

    def problem(self, key: str, msg: str) -> None:
        self.found += 1
        if key in self.prof.sections.get(self.stage, {}) or key not in self.prof.common():
            self.problems.append(f"{_where(self.prof, self.stage, key)}: {msg}")
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

    def made_later(self, value: str) -> bool:
        """Does an earlier stage of this run write this path (so it cannot exist yet)?"""
        earlier = [s for s in self.planned if s < self.stage]
        if "{toy}" in value:
            return paths.TOY_STAGE in earlier
        return "{run}" in value and bool(earlier)

    def file(self, key: str, value: str | None = None) -> Path | None:
        """The path of a file parameter when it can be checked now; a missing one is a problem."""
        value = self.values[key] if value is None else value
        path = paths.resolve_path(value, self.run)
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
        hint = ""
        if "{toy}" in value and paths.TOY_STAGE not in self.planned:
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
        from lib.instructions import detect_lang, hangul_share
        if detect_lang(text) == want:
            return
        threshold = inspect.signature(detect_lang).parameters["threshold"].default
        side = {"ko": "Korean", "en": "English"}
        self.problem(key, f"{path} should be {side[want]} but reads as {side[detect_lang(text)]} "
                          f"(Hangul is {hangul_share(text):.0%} of its letters; a Korean side needs "
                          f"{threshold:.0%} or more): are the Korean and English files swapped?")

    def text(self, key: str, want: str) -> list[str] | None:
        """A text file with one document or sentence a line, in language ``want``; for a corpus
        parameter also a JSONL file (its records' text field) or a Hub split (not reachable here:
        only its form is checked)."""
        from lib.data import DataError, read_lines
        if key in CORPUS_KEYS:
            from lib.corpus import parse_corpus
            try:
                src = parse_corpus(self.values[key], self.run)
            except DataError as e:
                self.problem(key, str(e))
                return None
            if src.kind == "hub":
                return None
            if src.kind == "jsonl":
                path = self.file(key, str(src.path))
                if path is None:
                    return None
                try:
                    lines = _jsonl_texts(path, src.field, SAMPLE_LINES)
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
        from lib.data import DataError, read_parallel
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
            built = (paths.stage_dir(self.run, paths.TOY_STAGE) / "DONE").exists()
            if paths.TOY_STAGE not in self.planned and not built:
                self.problem(key, f"'toy' is the model {paths.TOY_STAGE} builds, and it has not run in "
                                  f"this run yet: " + ("run it first" if self.toy_profile() else
                                                       "give a model, or set base_model: toy in common"))
            return
        path = paths.resolve_path(value, self.run)
        if path.exists() or self.made_later(value):
            return
        if "{" in value or value.startswith((".", "/", "~")) or not HUB_ID.fullmatch(value):
            self.problem(key, f"{path} does not exist, and {value!r} is not a Hub id (owner/name)")


# ---------------------------------------------------------------------------- per stage

def _tokenizers(st: _Stage) -> None:
    from lib import tokenizer as T
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
        path = paths.resolve_path(spec, st.run)
        if not path.exists():
            if key == "korean_tokenizer" or T._looks_like_path(spec) or "{" in spec:
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


def _instructions(st: _Stage) -> None:
    from lib.instructions import load_instructions, read_records
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
        _preference_pairs(st)


def _preference_pairs(st: _Stage) -> None:
    """06's ``dpo_pairs``: the toy world's (only where 00 builds one) or a readable JSONL file."""
    value = st.values["dpo_pairs"]
    if value == "toy":
        if not st.toy_profile():
            st.problem("dpo_pairs", "'toy' builds pairs from the toy world, which this run does not build "
                                    "(base_model is not toy): set it to a JSONL of prompt, chosen, rejected")
        return
    path = st.file("dpo_pairs")
    if path is None:
        return
    from lib.preferences import read_pairs
    try:
        read_pairs(path)
    except (ValueError, FileNotFoundError) as e:
        st.problem("dpo_pairs", str(e))


def _record_text(rec: Any) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        return " ".join(_record_text(v) for k, v in rec.items() if k not in ("id", "link", "dialect"))
    if isinstance(rec, (list, tuple)):
        return " ".join(_record_text(v) for v in rec)
    return ""


def _tasks(st: _Stage) -> None:
    from lib import evaltasks as ET
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
            if isinstance(value, str) and value.startswith(ET.HUB_PREFIX):
                try:
                    ET.parse_source(value, st.run, where=f"tasks['{name}']['{lang}']")
                except ET.PairError as e:
                    st.problem("tasks", str(e))
                continue
            if not isinstance(value, str) or not value.strip():
                st.problem("tasks", f"tasks['{name}']['{lang}'] must be a file path or "
                                    f"hub:<dataset>/<config>/<split>, got {value!r}")
            elif st.file("tasks", value) is not None:
                local += 1
        if local < 2:
            continue
        try:
            pair = ET.read_pair(str(name), spec, st.run)
        except ET.PairError as e:
            st.problem("tasks", str(e))
            continue
        for lang in ET.LANGS:
            text = "\n".join(_record_text(r) for r in pair.records[lang][:SAMPLE_LINES])
            st.lang("tasks", pair.sources[lang].path, lang, text)


def _extra_tasks(st: _Stage) -> None:
    """07's extra tasks: local YAMLs exist and name a task, toy tasks have a toy world, and names
    are in lm-eval's default index (built, ~12 s, only when some entry is a name)."""
    from lib import extratasks as XT
    from lib import toyextra
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
            built = (paths.stage_dir(st.run, paths.TOY_STAGE) / "DONE").exists()
            if paths.TOY_STAGE not in st.planned and not built:
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


def _oracle_needs_a_clone(st: _Stage) -> None:
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


def _word_pairs(st: _Stage) -> None:
    """The word-pair file of the word-level objective, align_head and code-switching."""
    path = st.file("word_pairs")
    if path is None:
        return
    from lib.wordpairs import read_pairs
    try:
        read_pairs(path)
    except ValueError as e:
        st.problem("word_pairs", str(e))


def _stage_validators(st: _Stage) -> None:
    """The stages' own whole-config checks (run only when every value passed on its own)."""
    if st.stage == "02_embedding_init":
        _oracle_needs_a_clone(st)
    checks = {"03_stage1_contrastive": ("lib.train.contrastive", "_check", None),
              "05_stage3_pretrain": ("lib.train.pretrain", "check_method", "method"),
              "06_instruction_tuning": ("lib.train.pretrain", "check_method", "method")}
    if st.stage in checks:
        module, fn, key = checks[st.stage]
        try:
            getattr(importlib.import_module(module), fn)(st.cfg)
        except (ValueError, RuntimeError) as e:
            if key:
                st.problem(key, str(e))
            else:
                st.problems.append(f"{st.prof.path}: {st.stage}: {e}")


LANG_OF = {"text": "ko", "clm_text": "ko", "korean_corpus": "ko"}
CORPUS_KEYS = ("text", "clm_text", "ko_text", "en_text")     # lib.corpus.parse_corpus forms


def _jsonl_texts(path: Path, field: str, limit: int) -> list[str]:
    """The ``field`` strings of the first ``limit`` records of a JSONL corpus; a bad record is named."""
    from lib.data import DataError
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
PARALLEL = {"03_stage1_contrastive": [("pairs_ko", "pairs_en"), ("heldout_ko", "heldout_en")],
            "08_agreement_analysis": [("heldout_ko", "heldout_en")]}
TEXT_FILES = {"01_vocab_merge": ["sample_ko", "sample_en"],
              "02_embedding_init": ["sample_ko", "sample_en"],
              "03_stage1_contrastive": [],
              "04_stage2_lm_head": ["text", "heldout_ko", "heldout_en"],
              "05_stage3_pretrain": ["ko_text", "en_text", "heldout_ko", "heldout_en"]}


def _lang_of(key: str) -> str:
    if key in LANG_OF:
        return LANG_OF[key]
    return "ko" if re.search(r"(^|_)ko($|_)", key) else "en"


def check_stage(prof: Profile, stage: str, run: str, planned: list[str], problems: list[str],
                common: dict | None = None) -> None:
    """Append every problem of one stage's values and files to ``problems``."""
    st = _Stage(prof, stage, run, planned, problems, {} if common is None else common)
    for key, value in st.values.items():
        msg = _value_problem(key, value)
        if msg:
            st.problem(key, msg)
    if "layer_range" in st.values:
        rng = st.values["layer_range"]
        if rng and not (len(rng) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in rng)):
            st.problem("layer_range", f"must be [] or two layer indices [a, b], got {rng!r}")
    if not st.found:
        _stage_validators(st)
    for key in ("base_model", "init_from"):
        value = st.values.get(key)
        if not value or value == "auto":
            continue
        if key == "init_from" and re.fullmatch(r"\d\d_\w+", value):
            if value not in paths.stages() or value >= stage:
                st.problem(key, f"{value!r} is not an earlier stage of this pipeline "
                                f"(earlier stages: {', '.join(s for s in paths.stages() if s < stage)})")
            continue
        st.model(key, value)
    if stage == "07_benchmark_eval":
        from lib.evalmodels import _parse_stages
        for item in _parse_stages(st.values["stages"]) or []:
            if not any(s == item or (item.isdigit() and s[:2] == item.zfill(2)) for s in paths.stages()):
                st.problem("stages", f"{item!r} names no stage (use 'auto' or names such as "
                                     f"02_embedding_init,05)")
    for key in st.values.get("baselines", []):
        st.model("baselines", key)
    for key in TEXT_FILES.get(stage, []):
        st.text(key, _lang_of(key))
    for ko_key, en_key in PARALLEL.get(stage, []):
        st.parallel(ko_key, en_key)
    if stage == "03_stage1_contrastive" and st.values["clm_weight"] > 0:
        st.text("clm_text", "ko")
    if stage == "05_stage3_pretrain" and st.values["align_weight"] > 0:
        st.parallel("align_pairs_ko", "align_pairs_en")
    if stage == "05_stage3_pretrain" and st.values["code_switch_ratio"] > 0:
        from lib.corpus import DataError, parse_corpus
        for key in ("ko_text", "en_text"):
            try:
                kind = parse_corpus(st.values[key], run).kind
            except DataError:
                continue                                     # named by the file check below
            if kind != "text":
                st.problem("code_switch_ratio", f"code-switching rewrites text files line by line, but {key} is "
                                                f"{st.values[key]!r}: give a text file or set code_switch_ratio: 0")
    if (stage == "03_stage1_contrastive" and (st.values["objective"] != "sentence" or st.values["align_head"])) \
            or (stage == "05_stage3_pretrain" and st.values["code_switch_ratio"] > 0):
        _word_pairs(st)
    if stage == "01_vocab_merge":
        _tokenizers(st)
    if stage == "06_instruction_tuning":
        _instructions(st)
    if stage == "07_benchmark_eval":
        _tasks(st)
        _extra_tasks(st)


def check_profile(prof: Profile, stages: list[str], run: str | None = None) -> list[str]:
    """Every problem of ``prof`` for ``stages`` (run into ``run``), one line each; [] when fine."""
    problems = profile_problems(prof, stages)
    run = str(run or prof.name)
    common: dict = {}
    for stage in stages:
        check_stage(prof, stage, run, stages, problems, common)
    return problems
