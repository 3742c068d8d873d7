"""lib.eval.tasks / lib.eval.taskshape: the generic paired multiple-choice shape and its two presets.

The presets' generated task YAMLs are pinned by hash (data path replaced): 07 fingerprints the
YAMLs of every stored result, so a byte changed here would re-score every finished run. The
hashes were taken from the YAMLs of the fixed ``arc`` / ``belebele`` formats before the generic
shape replaced them (commit 94e904c).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from test_evaluate import arc_pair, belebele_pair, direct_logliks, read_jsonl, write_jsonl

from lib.core.params import load_profile
from lib.eval import harness as E
from lib.eval import tasks as ET
from lib.run.check import check_profile

# (re-pinned when lib/ became packages: only the header comment's module name changed; the task
# config 07's stored results are keyed by, lib.eval.harness.task_digests, did not)
PINNED = {"arc_en.yaml": "fc6c2394736739c4", "arc_ko.yaml": "7c32408ae59ef168",
          "bb_en.yaml": "d8c15348b72ae6c2", "bb_ko.yaml": "79c96f2e5a12e966"}

SENTENCES = [  # id, English pair, Korean pair, same meaning?
    ("s1", ("Minsu lives in Busan.", "Busan is where Minsu lives."),
     ("민수는 부산에 산다.", "민수가 사는 곳은 부산이다."), 1),
    ("s2", ("The cat likes the apple.", "The dog paints the house."),
     ("고양이는 사과를 좋아한다.", "개가 집을 칠한다."), 0),
    ("s3", ("The farmer sees the river.", "The river is seen by the farmer."),
     ("농부가 강을 본다.", "강이 농부에게 보인다."), 1),
    ("s4", ("The child finds the school.", "The teacher likes the market."),
     ("아이가 학교를 찾는다.", "선생님은 시장을 좋아한다."), 0),
    ("s5", ("The dog sees the cat.", "The cat is seen by the dog."),
     ("개가 고양이를 본다.", "고양이가 개에게 보인다."), 1),
]
PARAPHRASE = {
    "id": "pid", "question": "sentence1", "context": "sentence2", "answer": "label",
    "choices": {"en": ["no", "yes"], "ko": ["아니요", "예"]},
    "template": {"en": "Sentence 1: {question}\nSentence 2: {context}\nDo they mean the same?",
                 "ko": "문장 1: {question}\n문장 2: {context}\n같은 뜻인가요?"},
}


def paraphrase_pair(d: Path, fmt=None) -> dict:
    spec = {"format": fmt or PARAPHRASE}
    for k, lang in enumerate(ET.LANGS):
        rows = [{"pid": pid, "sentence1": pair[k][0], "sentence2": pair[k][1], "label": label}
                for pid, *pair, label in ((s[0], s[1], s[2], s[3]) for s in SENTENCES)]
        spec[lang] = str(write_jsonl(d / f"para_{lang}.jsonl", rows))
    return spec


def test_presets_write_the_pinned_yamls(tmp_path):
    data = tmp_path / "data"
    ET.write_tasks({"arc": arc_pair(data), "bb": belebele_pair(data)}, tmp_path / "tasks")
    got = {f.name: hashlib.sha256(f.read_text(encoding="utf-8").replace(f"{data.resolve()}/", "DATA/")
                                  .encode()).hexdigest()[:16]
           for f in sorted((tmp_path / "tasks").glob("*.yaml"))}
    assert got == PINNED
    # a preset is the generic shape: spelled out as a mapping it renders the same task
    arc_map = ET.format_of({"question": "question", "choices": "choices.text", "labels": "choices.label",
                            "answer": "answerKey", "template": {"en": "Question: {question}",
                                                                "ko": "질문: {question}"}})
    src = ET.parse_source(arc_pair(data)["ko"])
    a, b = ET.task_config("x", "ko", "arc", src), ET.task_config("x", "ko", arc_map, src)
    assert {**a, "metadata": None} == {**b, "metadata": None} and b["metadata"]["format"] == "generic"
    assert ET.format_of({"preset": "belebele"}).prompts == ET.get_format("belebele").prompts


def test_a_sentence_pair_task_through_the_generic_shape(tmp_path):
    p = ET.read_pair("para", paraphrase_pair(tmp_path))
    assert p.format == "generic" and p.n == 5 and p.chance() == 0.5
    assert p.fixed_labels() and p.rule == "calibrated"                 # yes/no labels: lib.eval.rules' default
    en, ko = p.records["en"][0], p.records["ko"][0]
    assert en["id"] == ko["id"] == "s1"
    assert ET.prompt(p.shape, "en", en) == ("Sentence 1: Minsu lives in Busan.\n"
                                            "Sentence 2: Busan is where Minsu lives.\nDo they mean the same?\nAnswer:")
    assert ET.prompt(p.shape, "ko", ko) == "문장 1: 민수는 부산에 산다.\n문장 2: 민수가 사는 곳은 부산이다.\n같은 뜻인가요?\n정답:"
    assert ET.choices(p.shape, ko, "ko") == ["아니요", "예"] and ET.gold(p.shape, ko) == 1
    with pytest.raises(ValueError, match="fixed labels per language: pass lang"):
        ET.choices(p.shape, ko)
    cfg = ET.task_config("para", "ko", p.shape, p.sources["ko"])
    assert cfg["doc_to_choice"] == ["아니요", "예"] and cfg["doc_to_target"] == "{{label|int}}"
    assert cfg["doc_to_text"] == "문장 1: {{sentence1}}\n문장 2: {{sentence2}}\n같은 뜻인가요?\n정답:"
    # other spellings: options as fields, 1-based answers, a composite id, no answer prefix
    fmt = ET.format_of({"id": ["src", "n"], "question": "q", "choices": ["a1", "a2", "a3"], "answer": "gold",
                        "answer_base": 1, "template": {"en": "Q: {question} A:", "ko": "질문: {question} 답:"},
                        "answer_prefix": {"en": "", "ko": ""}, "strip": ["question"]})
    doc = {"src": "x", "n": "07", "q": " Why? ", "a1": "a", "a2": "b", "a3": "c", "gold": 3}
    assert (fmt.item_id(doc), fmt.gold(doc), fmt.choices(doc)) == ("x#7", 2, ["a", "b", "c"])
    assert ET.prompt(fmt, "en", doc) == "Q: Why? A:" and fmt.doc_to_target == "{{gold|int - 1}}"


@pytest.mark.parametrize("change, message", [
    ({"template": {"en": "Sentence: {context}", "ko": "문장: {question} {context}"}},
     r"tasks\['para'\]\['format'\]\['template'\]\['en'\]: the template must show \{question\}"),
    ({"template": {"en": "{question} {sentence2}", "ko": "{question}"}},
     r"\['template'\]\['en'\]: only \{question\} and \{context\} may appear in braces, found \['sentence2'\]"),
    ({"template": {"en": "{question} {context}"}}, r"\['template'\]: expected \{en: \.\.\., ko: \.\.\.\}"),
    ({"context": None}, r"\['template'\]\['en'\]: the template shows \{context\} but no 'context' field"),
    ({"choices": {"en": ["no", "yes"], "ko": ["예"]}}, r"\['choices'\]\['ko'\]: expected at least 2"),
    ({"choices": "options list"}, r"\['choices'\]: expected a field name"),
    ({"choices": {"en": [False, True], "ko": ["아니요", "예"]}}, r"YAML reads bare yes/no/on/off as booleans"),
    ({"labels": "lab"}, r"\['labels'\]: fixed labels in 'choices' need no 'labels' field"),
    ({"answer_base": 2}, r"\['answer_base'\]: expected 0 or 1"),
    ({"questions": "x"}, r"tasks\['para'\]\['format'\]: unknown keys \['questions'\]"),
    ({"answer": None}, r"\['answer'\]: expected a field name"),
    ({"preset": "mmlu"}, r"\['preset'\]: unknown preset 'mmlu'"),
])
def test_bad_shapes_name_the_pair_and_key(tmp_path, change, message):
    fmt = {k: v for k, v in {**PARAPHRASE, **change}.items() if v is not None or k == "answer"}
    with pytest.raises(ET.PairError, match=message):
        ET.read_pair("para", paraphrase_pair(tmp_path, fmt))


def test_bad_records_of_a_generic_pair_name_file_and_line(tmp_path):
    spec = paraphrase_pair(tmp_path)
    rows = read_jsonl(spec["ko"])
    rows[2]["label"] = 2
    write_jsonl(Path(spec["ko"]), rows)
    with pytest.raises(ET.PairError, match=r"para_ko\.jsonl:3: 'label' must be an option number 0-1"):
        ET.read_pair("para", spec)
    rows[2]["label"] = 0                                      # the English says 1
    write_jsonl(Path(spec["ko"]), rows)
    with pytest.raises(ET.PairError, match=r"1 items disagree .*'s3'.*label differs: en 1, ko 0"):
        ET.read_pair("para", spec)
    del rows[2]["sentence2"]
    write_jsonl(Path(spec["ko"]), rows)
    with pytest.raises(ET.PairError, match=r"para_ko\.jsonl:3: a 'generic' record needs \['sentence2'\]"):
        ET.read_pair("para", spec)


def test_profile_check_names_a_bad_generic_format(tmp_path, tiny_assets):
    spec = paraphrase_pair(tmp_path)
    bad = {**PARAPHRASE, "template": {"en": "{question} {context}", "ko": "{question}"}}
    text = yaml.safe_dump({"common": {"base_model": str(tiny_assets["model"])},
                           "07_benchmark_eval": {"baselines": [], "extra_tasks": {},
                                                 "tasks": {"para": {**spec, "format": bad}}}},
                          allow_unicode=True)
    f = tmp_path / "p.yaml"
    f.write_text(text, encoding="utf-8")
    (problem,) = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert "07_benchmark_eval.tasks: tasks['para']['format']['template']['ko']: a context field is given" in problem
    f.write_text(text.replace("'{question}'\n", "'{question} {context}'\n"), encoding="utf-8")
    assert check_profile(load_profile(f), ["07_benchmark_eval"]) == []


@pytest.mark.slow
def test_a_sentence_pair_task_scores_through_07(tmp_path, tiny_assets):
    """The paraphrase pair through 07's evaluate_all on the tiny Llama: lm-eval rendered each
    language's template, scored the two labels of that language after it (and after the empty
    prompt), and the logged log-likelihoods are a direct computation's."""
    pairs = ET.write_tasks({"para": paraphrase_pair(tmp_path / "data")}, tmp_path / "st" / "tasks")
    info = json.loads((tmp_path / "st" / "tasks" / "pairs.json").read_text(encoding="utf-8"))
    assert info["para"]["format"] == "generic" and info["para"]["rule"] == "calibrated"
    models = E.baseline_models([str(tiny_assets["model"])], str)
    (entry,) = E.evaluate_all(models, pairs, tmp_path / "st", device="cpu", batch_size=4, progress=False)
    for lang, prompt, labels in (
            ("en", "Sentence 1: The dog sees the cat.\nSentence 2: The cat is seen by the dog.\n"
                   "Do they mean the same?\nAnswer:", ["no", "yes"]),
            ("ko", "문장 1: 개가 고양이를 본다.\n문장 2: 고양이가 개에게 보인다.\n같은 뜻인가요?\n정답:", ["아니요", "예"])):
        t = entry["tasks"]["para"][lang]
        assert t["n"] == 5 and t["rule"] == "calibrated" and 0 <= t["acc"] <= 1
        logs = read_jsonl(t["samples"])
        assert [s["doc"]["id"] for s in logs] == ["s1", "s2", "s3", "s4", "s5"]
        assert [s["target"] for s in logs] == [1, 0, 1, 0, 1]
        s = logs[4]
        assert [a[0] for a in s["arguments"]] == [prompt] * 2 + [""] * 2
        assert [a[1] for a in s["arguments"]] == [" " + x for x in labels] * 2
        assert set(s["chosen"]) == {"acc", "per_token", "acc_norm", "calibrated"}
        logged = [r[0] for r in s["filtered_resps"]][:2]
        assert logged == pytest.approx(direct_logliks(tiny_assets["model"], prompt, labels), abs=1e-4)
        assert s["chosen"]["acc"]["index"] == max(range(2), key=logged.__getitem__)
