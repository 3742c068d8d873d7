"""lib.eval.contamination: evaluated questions and passages found in training files, by word n-grams.

Hand-made pairs and training files with planted copies (exact counts, the line named), the
stages' inputs taken from their params, 08's clean rows, the CLI, and the real files of
../shared/data (one ARC question is in LIMA)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.cli.pipeline import main
from lib.eval import contamination as C
from lib.eval.tasks import read_pair

Q_LONG = "Which process in the water cycle turns liquid water into vapour above warm oceans?"
Q_KO = "따뜻한 바다 위에서 액체 상태의 물을 수증기로 바꾸는 물의 순환 과정은 무엇입니까?"
Q_NEAR = "Which gas do green plants take in from the air to make their food in sunlight?"
Q_SHORT5 = "Why do leaves change colour?"


def _arc(i, q):
    return {"id": f"q{i}", "question": q, "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}


def _write_pair(tmp: Path) -> dict:
    en = [_arc(1, Q_LONG), _arc(2, "What makes rain fall from clouds to the ground below?"), _arc(3, Q_NEAR),
          _arc(4, "Why?"), _arc(5, Q_SHORT5)]
    ko = [_arc(1, "물의 순환에서 액체인 물을 수증기로 바꾸는 과정은?"), _arc(2, Q_KO), _arc(3, "식물은 무엇을 마십니까?"),
          _arc(4, "왜?"), _arc(5, "잎은 왜 색이 변합니까?")]
    for lang, recs in (("en", en), ("ko", ko)):
        (tmp / f"t_{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                            encoding="utf-8")
    return {"en": str(tmp / "t_en.jsonl"), "ko": str(tmp / "t_ko.jsonl"), "format": "arc"}


def _training(tmp: Path) -> dict[str, Path]:
    f = {}
    f["mono_en"] = tmp / "mono.en"             # q1 copied with other case, punctuation and line context
    f["mono_en"].write_text("Rain is nice.\n"
                            "Quiz: WHICH process, in the water-cycle, turns liquid water into vapour above "
                            "warm oceans??? Think.\n"
                            # q3: only its first 7 words, then something else: no 8-gram shared
                            "Which gas do green plants take in at night, asked nobody.\n", encoding="utf-8")
    f["sft"] = tmp / "sft.json"                # the Korean q2 inside an instruction's output
    f["sft"].write_text(json.dumps([{"instruction": "퀴즈", "input": "", "output": "인사"},
                                    {"instruction": "문제를 내 주세요", "input": "",
                                     "output": "문제: " + Q_KO + " 정답: 증발"}], ensure_ascii=False), encoding="utf-8")
    f["dpo"] = tmp / "pairs.jsonl"             # q5 (5 words) whole in a prompt; 4 of its words elsewhere
    f["dpo"].write_text(json.dumps({"prompt": "Answer: why do leaves change colour", "chosen": "x", "rejected": "y"}) + "\n"
                        + json.dumps({"prompt": "why do leaves change", "chosen": "x", "rejected": "y"}) + "\n",
                        encoding="utf-8")
    return f


def _params(f: dict[str, Path], **over) -> dict:
    p = {"04_stage2_lm_head": {"text": str(f["mono_en"])},
         "06_instruction_tuning": {"data_files": [str(f["sft"])], "dpo": True, "dpo_pairs": str(f["dpo"])}}
    for stage, values in over.items():
        p.setdefault(stage, {}).update(values)
    return p


def test_words_ignore_case_punctuation_and_width():
    assert C.words("ＷHICH process, in the water-cycle?\n") == ["which", "process", "in", "the", "water", "cycle"]
    assert C.words("물의 순환은?") == ["물의", "순환은"]


def test_planted_copies_are_found_and_near_misses_are_not(tmp_path):
    pairs = {"quiz": read_pair("quiz", _write_pair(tmp_path))}
    f = _training(tmp_path)
    found = C.scan(pairs, C.stage_inputs(_params(f), tmp_path), progress=False)
    g = {(x["lang"], x["field"]): x for x in found["groups"]}
    assert g[("en", "question")]["items"] == 5 and g[("en", "question")]["too_short"] == 1      # "Why?"
    assert g[("en", "question")]["dirty"] == 2                                                  # q1, q5
    assert g[("en", "question")]["overlapping"] == 2                                            # not q3 (7 words)
    assert g[("ko", "question")]["dirty"] == 1 and g[("ko", "question")]["too_short"] == 1      # q2 ; "왜?"
    assert found["dirty_items"] == {"quiz": ["q1", "q2", "q5"]}
    assert C.n_dirty(found) == 3
    ex = {e["item"]: e for x in found["groups"] for e in x["examples"]}
    assert ex["q1"] == {"item": "q1", "coverage": 1.0, "where": f"{f['mono_en']}:2"}
    assert ex["q2"]["where"] == f"{f['sft']}, record 1"
    assert ex["q5"]["where"] == f"{f['dpo']}:1"
    by_file = {Path(i["file"]).name: i for i in found["inputs"]}
    assert by_file["mono.en"]["texts"] == 3 and by_file["sft.json"]["texts"] == 2
    md = C.render(found)
    assert "3 dirty item(s)" in md and "| quiz | question | en | 5 | 1 | 2 | 2 |" in md


def test_partial_copy_is_overlapping_but_not_dirty(tmp_path):
    long_q = " ".join(f"w{i}" for i in range(20))
    (tmp_path / "en.jsonl").write_text(json.dumps(_arc(1, long_q)) + "\n")
    (tmp_path / "ko.jsonl").write_text(json.dumps(_arc(1, "가 나 다 라")) + "\n")
    pairs = {"p": read_pair("p", {"en": str(tmp_path / "en.jsonl"), "ko": str(tmp_path / "ko.jsonl"), "format": "arc"})}
    (tmp_path / "t.txt").write_text(" ".join(f"w{i}" for i in range(9)) + "\n")       # 9 of 20 words: 45%
    inputs = C.stage_inputs({"04_stage2_lm_head": {"text": str(tmp_path / "t.txt")}}, tmp_path)
    g = C.scan(pairs, inputs, progress=False)["groups"]
    en = next(x for x in g if x["lang"] == "en")
    assert en["overlapping"] == 1 and en["dirty"] == 0
    (tmp_path / "t.txt").write_text(" ".join(f"w{i}" for i in range(10)) + "\n")      # 10 of 20: dirty
    en = next(x for x in C.scan(pairs, inputs, progress=False)["groups"] if x["lang"] == "en")
    assert en["dirty"] == 1 and en["examples"][0]["coverage"] == 0.5


def test_inputs_follow_what_each_stage_trains_on(tmp_path):
    f = _training(tmp_path)
    (tmp_path / "p.ko").write_text("가\n")
    (tmp_path / "p.en").write_text("a\n")
    common = {"pairs_ko": str(tmp_path / "p.ko"), "pairs_en": str(tmp_path / "p.en"), "clm_text": str(f["mono_en"])}
    params = _params(f, **{"03_stage1_contrastive": {**common, "clm_weight": 0.0},
                           "05_stage3_pretrain": {"ko_text": "hub:someone/corpus//train", "en_text": str(f["mono_en"]),
                                                  "align_pairs_ko": str(tmp_path / "p.ko"),
                                                  "align_pairs_en": str(tmp_path / "p.en"), "align_weight": 0.0}})
    params["06_instruction_tuning"]["dpo"] = False
    got = {(Path(i.spec).name if i.path else i.spec): (i.stages, i.why_not) for i, _ in C.stage_inputs(params, tmp_path)}
    assert got == {"p.ko": (["03_stage1_contrastive"], None), "p.en": (["03_stage1_contrastive"], None),
                   "mono.en": (["04_stage2_lm_head", "05_stage3_pretrain"], None),
                   "hub:someone/corpus//train": (["05_stage3_pretrain"], "a Hub dataset: not read here (scan a local copy of it)"),
                   "sft.json": (["06_instruction_tuning"], None)}
    params["03_stage1_contrastive"]["clm_weight"] = 0.5          # now 03 trains on clm_text too
    params["05_stage3_pretrain"]["align_weight"] = 0.5
    params["06_instruction_tuning"]["dpo"] = True
    got = {Path(i.spec).name: i.stages for i, _ in C.stage_inputs(params, tmp_path) if i.path}
    assert got["mono.en"] == ["03_stage1_contrastive", "04_stage2_lm_head", "05_stage3_pretrain"]
    assert got["p.ko"] == ["03_stage1_contrastive", "05_stage3_pretrain"] and "pairs.jsonl" in got


def test_clean_rows_leave_out_only_this_runs_dirty_items():
    it = lambda i, en, ko: {"id": i, "gold": 0, "pred_en": en, "pred_ko": ko}         # noqa: E731
    items = {("r", "m", "quiz"): [it("q1", 0, 0), it("q2", 0, 1), it("q3", 1, 1)],
             ("r", "m", "other"): [it("a", 0, 0)], ("r2", "m", "quiz"): [it("q1", 0, 0)]}
    clean = C.clean_items(items, {"quiz": {"q1"}}, "r")
    assert clean == {("r", "m", "quiz"): [it("q2", 0, 1), it("q3", 1, 1)]}
    full = [{"run": "r", "model": "m", "task": "quiz", "n": 3, "acc_en": 2 / 3, "acc_ko": 1 / 3, "agreement": 2 / 3, "kappa": 0.4}]
    cl = [{"run": "r", "model": "m", "task": "quiz", "n": 2, "acc_en": 0.5, "acc_ko": 0.0, "agreement": 0.5, "kappa": 0.0}]
    row = C.clean_rows(full, cl)[0]
    assert (row["n"], row["n_clean"], row["acc_en"], row["acc_en_clean"], row["acc_ko_clean"]) == (3, 2, 2 / 3, 0.5, 0.0)


def test_cli_exits_1_on_a_dirty_item_and_0_when_clean(tmp_path, capsys):
    spec = _write_pair(tmp_path)
    f = _training(tmp_path)
    prof = tmp_path / "p.yaml"
    body = (f"common:\n  base_model: {tmp_path}/model\n"
            "pipeline:\n  skip: ['03', '05', '06']\n"
            f"04_stage2_lm_head:\n  text: {f['mono_en']}\n"
            f"07_benchmark_eval:\n  tasks:\n    quiz: {{en: {spec['en']}, ko: {spec['ko']}, format: arc}}\n")
    prof.write_text(body)
    assert main(["contamination", str(prof)]) == 1
    out = capsys.readouterr().out
    assert "1 dirty item(s)" in out and f"{f['mono_en']}:2" in out
    f["mono_en"].write_text("Rain is nice.\n")
    assert main(["contamination", str(prof)]) == 0
    assert "0 dirty item(s)" in capsys.readouterr().out
    # a file not scanned, or nothing read, is not "clean": one error line, exit 1 (issue 27)
    prof.write_text(body.replace("skip: ['03', '05', '06']", "skip: ['03', '06']"))
    assert main(["contamination", str(prof)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: the scan is incomplete (2 input(s) not scanned, 1 texts read): not a "
                                    "clean result; give local copies of what was not scanned")
    f["mono_en"].unlink()
    prof.write_text(body)
    assert main(["contamination", str(prof)]) == 1
    assert "0 texts read" in capsys.readouterr().err.splitlines()[-1]
    assert main(["contamination", str(prof), "--ngram", "0"]) == 1
    assert capsys.readouterr().err == "error: --ngram must be 2 or more words, got 0\n"


@pytest.mark.shared_data
def test_real_files_one_arc_question_is_in_lima(shared_data):
    """The rehearsal's real files: ARC-Challenge Mercury_SC_416167 ("What is the largest organ in
    the human body?") is one of LIMA's trivia answers; nothing else, Belebele passages included."""
    from lib.core import paths
    from lib.core.params import load_profile
    found = C.scan_profile(load_profile(paths.PARAMS / "rehearsal.yaml"), progress=False)
    assert found["dirty_items"] == {"arc_challenge": ["Mercury_SC_416167"], "belebele": []}
    ex = [e for g in found["groups"] for e in g["examples"]]
    assert len(ex) == 1 and ex[0]["where"].endswith("sft/lima_en.json, record 593")
    g = {(x["pair"], x["field"], x["lang"]): x for x in found["groups"]}
    assert g[("belebele", "context", "en")]["items"] == 900 and g[("belebele", "context", "ko")]["dirty"] == 0
    arc = g[("arc_challenge", "question", "en")]
    assert (arc["items"], arc["too_short"], arc["compared"]) == (1172, 1, 1171)


def test_check_refuses_a_one_word_ngram(tmp_path):
    from lib.core.params import load_profile
    from lib.run.check import check_profile
    f = tmp_path / "p.yaml"
    f.write_text("07_benchmark_eval:\n  contamination_ngram: 1\n")
    problems = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert any("07_benchmark_eval.contamination_ngram: must be 0 (no scan) or 2 or more words, got 1" in p
               for p in problems), problems
    f.write_text("07_benchmark_eval:\n  contamination_ngram: 0\n")
    assert not any("contamination_ngram" in p for p in check_profile(load_profile(f), ["07_benchmark_eval"]))


def test_a_local_dataset_folder_is_read_and_a_hub_id_is_listed_as_not_scanned(tmp_path):
    pairs = {"quiz": read_pair("quiz", _write_pair(tmp_path))}
    folder = tmp_path / "hubdir"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"body": "intro"}) + "\n"
                                        + json.dumps({"body": "so: " + Q_LONG.upper()}) + "\n", encoding="utf-8")
    params = {"05_stage3_pretrain": {"ko_text": "hub:someone/corpus//train", "en_text": f"hub:{folder}//train#body"}}
    found = C.scan(pairs, C.stage_inputs(params, tmp_path), progress=False)
    assert found["dirty_items"] == {"quiz": ["q1"]}
    ex = next(e for g in found["groups"] for e in g["examples"])
    assert ex["where"] == f"hub:{folder}//train#body, row 1"
    assert C.not_scanned(found) == ["05_stage3_pretrain.ko_text: hub:someone/corpus//train: "
                                    "a Hub dataset: not read here (scan a local copy of it)"]
