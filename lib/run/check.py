"""Everything about a profile that can be checked before anything runs, listed all at once.

    python -m lib.pipeline check params/a6000.yaml     # what `run` also does first
    problems = check_profile(load_profile("params/toy.yaml"), ["01_vocab_merge"])   # [] when fine

On top of :func:`lib.core.params.profile_problems` (unknown keys, types) it checks values (finite
numbers, ranges, enums such as ``device``, ``pooling``, ``method``, ``init``, ``merge_mode``), the
07 ``tasks`` spec, the tokenizer-or-corpus rule of 01, and every input file: it exists and reads
with the stage's own reader, parallel files have equal line counts, JSONL records have their
fields, and a Korean side reads as Korean and an English side as English (a swap is caught).
Enums and record checks are the stages' own constants and functions, so a value a stage learns
later is accepted here too. Each problem is one line: ``file:line: stage.key: what, what to do``.

Files under ``{toy}`` (or ``{run}``) that an earlier stage of the same run will write are not
checked before that stage has run. Stages that ``pipeline.share`` links from a finished run count as present (their
files are looked for there); a model spec that names nothing (``base_model: tyo``) is one line
naming the key (:mod:`lib.run.checksources`), not a line for every ``{toy}`` file it leaves unbuilt. The value rules are :mod:`lib.run.checkvalues`, the input
rules :mod:`lib.run.checkinputs`; what each stage checks on top is registered in
:data:`STAGE_CHECKS` (a stage without an entry has only its values and files checked).
"""

from __future__ import annotations

import re
from typing import Callable

from lib.core import paths
from lib.core.params import Profile, profile_problems
from lib.data.corpus import DataError, parse_corpus
from lib.eval import judge
from lib.eval.models import parse_stages
from lib.run import checkinputs as CI
from lib.run.checkinputs import StageInputs
from lib.run.checkvalues import value_problem


def _contrastive(st: StageInputs) -> None:
    if st.values["clm_weight"] > 0:
        st.text("clm_text", "ko")
    if st.values["objective"] != "sentence" or st.values["align_head"]:
        CI.word_pairs(st)


def _pretrain(st: StageInputs) -> None:
    if st.values["align_weight"] > 0:
        st.parallel("align_pairs_ko", "align_pairs_en")
    if st.values["code_switch_ratio"] > 0:
        for key in ("ko_text", "en_text"):
            try:
                kind = parse_corpus(st.values[key], st.run).kind
            except DataError:
                continue                                     # named by the file check
            if kind != "text":
                st.problem("code_switch_ratio", f"code-switching rewrites text files line by line, but {key} is "
                                                f"{st.values[key]!r}: give a text file or set code_switch_ratio: 0")
        CI.word_pairs(st)


def _benchmark(st: StageInputs) -> None:
    for item in parse_stages(st.values["stages"]) or []:
        if not any(s == item or (item.isdigit() and s[:2] == item.zfill(2)) for s in paths.stages()):
            st.problem("stages", f"{item!r} names no stage (use 'auto' or names such as 02_embedding_init,05)")
    CI.tasks(st)
    CI.extra_tasks(st)


def _instruction(st: StageInputs) -> None:
    CI.instructions(st)
    if st.values["align_weight"] > 0:
        st.parallel("align_pairs_ko", "align_pairs_en")
    if st.values["parallel_share"] > 0 or (st.values["dpo"] and st.values["dpo_pairs"] == "consistency"):
        CI.parallel_instructions(st)


# what each stage checks besides its values, its model specs and its TEXT_FILES / PARALLEL files
STAGE_CHECKS: dict[str, list[Callable[[StageInputs], None]]] = {
    "01_vocab_merge": [CI.tokenizers],
    "03_stage1_contrastive": [_contrastive],
    "05_stage3_pretrain": [_pretrain],
    "06_instruction_tuning": [_instruction],
    "07_benchmark_eval": [_benchmark],
}


# model keys a stage does not load under some values: 01 reads only a tokenizer when base_tokenizer is set
UNUSED: dict[tuple[str, str], Callable[[dict], bool]] = {
    ("base_model", "01_vocab_merge"): lambda values: bool(values["base_tokenizer"]),
}


def check_stage(prof: Profile, stage: str, run: str, planned: list[str], problems: list[str],
                common: dict | None = None) -> None:
    """Append every problem of one stage's values and files to ``problems``."""
    st = StageInputs(prof, stage, run, planned, problems, {} if common is None else common)
    for key, value in st.values.items():
        msg = value_problem(key, value)
        if msg:
            st.problem(key, msg)
    if "layer_range" in st.values:
        rng = st.values["layer_range"]
        if rng and not (len(rng) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in rng)):
            st.problem("layer_range", f"must be [] or two layer indices [a, b], got {rng!r}")
    if not st.found:
        CI.stage_validators(st)
    for key in ("base_model", "init_from"):
        value = st.values.get(key)
        if not value or value == "auto" or (key, stage) in UNUSED and UNUSED[key, stage](st.values):
            continue
        if key == "init_from" and re.fullmatch(r"\d\d_\w+", value):
            if value not in paths.stages() or value >= stage:
                st.problem(key, f"{value!r} is not an earlier stage of this pipeline "
                                f"(earlier stages: {', '.join(s for s in paths.stages() if s < stage)})")
            continue
        st.model(key, value)
    for key in st.values.get("baselines", []):
        st.model("baselines", key)
    for key in CI.TEXT_FILES.get(stage, []):
        st.text(key, CI.lang_of(key))
    for ko_key, en_key in CI.PARALLEL.get(stage, []):
        st.parallel(ko_key, en_key)
    for check in STAGE_CHECKS.get(stage, []):
        check(st)


def check_profile(prof: Profile, stages: list[str], run: str | None = None) -> list[str]:
    """Every problem of ``prof`` for ``stages`` (run into ``run``), one line each; [] when fine."""
    problems = profile_problems(prof, stages, {"judge": judge.value_problem})
    run = str(run or prof.name)
    common: dict = {}
    for stage in stages:
        check_stage(prof, stage, run, stages, problems, common)
    return problems
