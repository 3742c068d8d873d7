"""07_benchmark_eval: paired task files, generated lm-eval YAMLs, real harness runs on a tiny Llama.

The log-likelihood test recomputes one item's option scores by hand (tokenize the prompt written
out here, one forward pass, sum of log-softmax over the option's tokens) and compares them with
lm-eval's per-sample log: equal to 1e-4 only if the harness scored exactly that prompt.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from lib.analysis import agreement as ag
from lib.eval import harness as E
from lib.eval import samples
from lib.eval import tasks as ET

QUESTIONS = [  # id, English, Korean, options (en), options (ko), answer
    ("q1", "Where does Minsu live?", "민수는 어디에 살아요?", ["Busan", "Seoul", "Daegu", "Incheon"],
     ["부산", "서울", "대구", "인천"], "A"),
    ("q2", "What does the cat like?", "고양이는 무엇을 좋아해요?", ["the river", "the apple", "the house"],
     ["강", "사과", "집"], "B"),
    ("q3", "Who paints the house?", "누가 집을 칠해요?", ["the farmer", "the child", "the dog", "the teacher"],
     ["농부", "아이", "개", "선생님"], "D"),
    ("q4", "Where is the market?", "시장은 어디에 있어요?", ["near the school", "near the river"],
     ["학교 근처", "강 근처"], "A"),
    ("q5", "What does the dog find?", "개는 무엇을 찾아요?", ["an apple", "a house", "a river", "a school"],
     ["사과", "집", "강", "학교"], "C"),
    ("q6", "Who sees the teacher?", "누가 선생님을 봐요?", ["the cat", "the farmer", "the child", "the dog"],
     ["고양이", "농부", "아이", "개"], "B"),
]


def arc_records(lang: str) -> list[dict]:
    out = []
    for qid, q_en, q_ko, o_en, o_ko, key in QUESTIONS:
        opts = o_en if lang == "en" else o_ko
        out.append({"id": qid, "question": q_en if lang == "en" else q_ko,
                    "choices": {"text": list(opts), "label": list("ABCD")[:len(opts)]}, "answerKey": key})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def arc_pair(d: Path, ko_order=None) -> dict:
    """The tiny pair; the Korean file may list the items in another order (they join by id)."""
    ko = arc_records("ko")
    if ko_order is not None:
        ko = [ko[i] for i in ko_order]
    return {"en": str(write_jsonl(d / "arc_en.jsonl", arc_records("en"))),
            "ko": str(write_jsonl(d / "arc_ko.jsonl", ko)), "format": "arc"}


def belebele_pair(d: Path) -> dict:
    rows = {"en": [], "ko": []}
    for i, (lang, passage, q, answers) in enumerate([
            ("en", "Minsu lives in Busan. He likes the sea.", "Where does Minsu live?", ["Seoul", "Busan", "Daegu", "Jeju"]),
            ("ko", "민수는 부산에 산다. 그는 바다를 좋아한다.", "민수는 어디에 사는가?", ["서울", "부산", "대구", "제주"])]):
        for n in (1, 2):
            rows[lang].append({"link": "https://example.org/a", "question_number": n, "flores_passage": passage,
                               "question": q + " ", **{f"mc_answer{k + 1}": a for k, a in enumerate(answers)},
                               "correct_answer_num": "2"})
    return {"en": str(write_jsonl(d / "bb_en.jsonl", rows["en"])),
            "ko": str(write_jsonl(d / "bb_ko.jsonl", rows["ko"])), "format": "belebele"}


# ---------------------------------------------------------------------------- pairs and YAMLs


def test_load_pair_aligns_by_id(tmp_path):
    en, ko = ET.load_pair(arc_pair(tmp_path, ko_order=[5, 4, 3, 2, 1, 0]))
    assert [r["id"] for r in en] == [r["id"] for r in ko] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert ko[0]["question"] == "민수는 어디에 살아요?"
    p = ET.read_pair("x", arc_pair(tmp_path, ko_order=[5, 4, 3, 2, 1, 0]))
    assert p.positions == {"en": [0, 1, 2, 3, 4, 5], "ko": [5, 4, 3, 2, 1, 0]}
    assert p.chance() == pytest.approx((4 * 0.25 + 1 / 3 + 0.5) / 6)
    # limited runs pick the same questions in both files whatever their order
    assert E._selection({"x": p}, 2) == {"x_en": [0, 1], "x_ko": [4, 5]}
    assert E._selection({"x": p}, 0) is None
    same = ET.read_pair("y", arc_pair(tmp_path / "same", ko_order=[0, 1, 2, 3, 4, 5]))
    assert E._selection({"y": same}, 2) is None          # both files' first rows: lm-eval's limit does it
    en, ko = ET.load_pair(belebele_pair(tmp_path))
    assert [r["id"] for r in en] == [r["id"] for r in ko] == ["https://example.org/a#1", "https://example.org/a#2"]
    assert ET.gold("belebele", ko[0]) == 1 and ET.choices("belebele", ko[0])[1] == "부산"


def _broken(tmp_path, mutate_ko) -> dict:
    spec = arc_pair(tmp_path)
    ko = arc_records("ko")
    mutate_ko(ko)
    write_jsonl(Path(spec["ko"]), ko)
    return spec


@pytest.mark.parametrize("mutate, message", [
    (lambda ko: ko.pop(2), r"do not join 1:1 by id .* 1 ids only in .*arc_en\.jsonl: 'q3'"),
    (lambda ko: ko[1].update(id="zz"), r"ids only in .*arc_en\.jsonl: 'q2'.* ids only in .*arc_ko\.jsonl: 'zz'"),
    (lambda ko: ko[3].update(answerKey="E"), r"arc_ko\.jsonl:4: answerKey 'E' is not among choices\.label"),
    (lambda ko: ko[0].update(answerKey="B"), r"disagree between the languages.*'q1'.*answerKey differs"),
    (lambda ko: ko[4].update(id="q1"), r"arc_ko\.jsonl:5: duplicate id 'q1' \(first at .*arc_ko\.jsonl:1\)"),
    (lambda ko: ko[0]["choices"]["text"].pop(), r"arc_ko\.jsonl:1: choices\.text has 3 options and choices\.label 4"),
    (lambda ko: ko[0].pop("question"), r"arc_ko\.jsonl:1: a 'arc' record needs \['question'\]"),
])
def test_bad_pairs_name_file_line_and_ids(tmp_path, mutate, message):
    with pytest.raises(ET.PairError, match=message):
        ET.load_pair(_broken(tmp_path, mutate))


def test_bad_files_and_specs(tmp_path):
    spec = arc_pair(tmp_path)
    text = Path(spec["ko"]).read_text(encoding="utf-8").splitlines()
    Path(spec["ko"]).write_text("\n".join(text[:2] + [""] + text[2:]) + "\n", encoding="utf-8")
    with pytest.raises(ET.PairError, match=r"arc_ko\.jsonl:3: empty line"):
        ET.load_pair(spec)
    Path(spec["ko"]).write_bytes("\n".join(text[:1]).encode() + b"\n" + "민수".encode("cp949") + b"\n")
    with pytest.raises(ET.PairError, match=r"arc_ko\.jsonl:2: not UTF-8"):
        ET.load_pair(spec)
    Path(spec["ko"]).write_text(text[0] + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ET.PairError, match=r"arc_ko\.jsonl:2: not valid JSON"):
        ET.load_pair(spec)
    with pytest.raises(ET.PairError, match="unknown format 'mmlu'"):
        ET.load_pair({**spec, "format": "mmlu"})
    with pytest.raises(ET.PairError, match=r"unknown keys \['fr'\]"):
        ET.load_pair({**spec, "fr": "x"})
    with pytest.raises(ET.PairError, match="file not found"):
        ET.load_pair({**spec, "en": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ET.PairError, match="pass run= to expand it"):
        ET.load_pair({**spec, "en": "{toy}/eval/arc_en.jsonl"})


def test_hub_sources_become_hub_task_configs():
    src = ET.parse_source("hub:allenai/ai2_arc/ARC-Challenge/test")
    assert (src.dataset, src.config, src.split, src.is_hub) == ("allenai/ai2_arc", "ARC-Challenge", "test", True)
    cfg = ET.task_config("arc", "en", "arc", src)
    assert cfg["dataset_path"] == "allenai/ai2_arc" and cfg["dataset_name"] == "ARC-Challenge"
    assert cfg["test_split"] == "test" and "dataset_kwargs" not in cfg
    cfg = ET.task_config("bb", "ko", "belebele", ET.parse_source("hub:facebook/belebele//kor_Hang"))
    assert cfg["dataset_path"] == "facebook/belebele" and "dataset_name" not in cfg and cfg["test_split"] == "kor_Hang"
    with pytest.raises(ET.PairError, match="hub:<dataset>/<config>/<split>"):
        ET.parse_source("hub:allenai/ai2_arc")


def test_generated_yamls_are_absolute_and_fresh(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "00_toy_world/eval/arc_en.jsonl", arc_records("en"))
    write_jsonl(run / "00_toy_world/eval/arc_ko.jsonl", arc_records("ko"))
    pairs = {"toy_arc": {"en": "{toy}/eval/arc_en.jsonl", "ko": "{toy}/eval/arc_ko.jsonl", "format": "arc"},
             "bb": belebele_pair(tmp_path)}
    out = tmp_path / "stage" / "tasks"
    ET.write_tasks(pairs, out, run=run)
    first = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
    assert sorted(first) == ["bb_en.yaml", "bb_ko.yaml", "pairs.json", "toy_arc_en.yaml", "toy_arc_ko.yaml"]
    ET.write_tasks(pairs, out, run=run)
    assert {f.name: f.read_bytes() for f in sorted(out.iterdir())} == first      # fresh: byte-identical
    cfg = yaml.safe_load(first["toy_arc_ko.yaml"])
    data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == (run / "00_toy_world/eval/arc_ko.jsonl").resolve()
    assert cfg["task"] == "toy_arc_ko" and cfg["doc_to_text"] == "질문: {{question}}\n정답:"
    assert yaml.safe_load(first["toy_arc_en.yaml"])["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert first["toy_arc_en.yaml"].startswith(ET.HEADER.encode())
    info = json.loads(first["pairs.json"])
    assert info["toy_arc"]["n"] == 6 and info["toy_arc"]["ko"]["task"] == "toy_arc_ko"
    # a pair removed from the spec leaves no stale YAML behind
    ET.write_tasks({"bb": pairs["bb"]}, out, run=run)
    assert sorted(f.name for f in out.iterdir()) == ["bb_en.yaml", "bb_ko.yaml", "pairs.json"]


@pytest.mark.slow
def test_lm_eval_renders_the_yaml_like_python(tmp_path):
    """lm-eval's own TaskManager loads the generated YAMLs; its prompts, options and golds equal
    what :mod:`lib.eval.tasks` says (the functions 08 uses to look at the same questions)."""
    from lm_eval.tasks import TaskManager
    pairs = {"arc": arc_pair(tmp_path, ko_order=[1, 0, 2, 3, 4, 5]), "bb": belebele_pair(tmp_path)}
    loaded = ET.write_tasks(pairs, tmp_path / "tasks")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    tasks = tm.load(["arc_en", "arc_ko", "bb_en", "bb_ko"])["tasks"]
    for name, p in loaded.items():
        for lang in ET.LANGS:
            task = tasks[f"{name}_{lang}"]
            docs = list(task.test_docs())
            assert len(docs) == p.n
            for doc in docs:
                assert task.doc_to_text(doc) == ET.prompt(p.format, lang, doc)
                assert task.doc_to_choice(doc) == ET.choices(p.format, doc)
                assert task.doc_to_target(doc) == ET.gold(p.format, doc)
    doc = next(iter(tasks["bb_en"].test_docs()))
    assert ET.prompt("belebele", "en", doc) == ("Passage: Minsu lives in Busan. He likes the sea.\n"
                                                "Question: Where does Minsu live?\nAnswer:")


# ---------------------------------------------------------------------------- which models


def fake_model(d: Path, weights: bytes = b"w") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(weights)
    return d


def done(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "DONE").write_text("{}")
    return d


def test_stage_models_order_kinds_and_reuse(tmp_path):
    run = tmp_path / "run"
    fake_model(done(run / "00_toy_world") / "model")
    done(run / "01_vocab_merge")
    fake_model(done(run / "02_embedding_init") / "model")
    s4 = done(run / "04_stage2_lm_head")
    fake_model(s4 / "checkpoints/step-000100/model", b"b")
    fake_model(s4 / "checkpoints/step-000050/model", b"a")
    fake_model(s4 / "model", b"b")                          # the loop copies the last checkpoint
    fake_model(run / "05_stage3_pretrain/model")             # not finished: left out, with a warning
    with pytest.warns(UserWarning, match="05_stage3_pretrain has a model/ but is not finished"):
        models = E.stage_models(run)
    assert [(m.name, m.kind, m.stage, m.step, m.same_as) for m in models] == [
        ("02_embedding_init", "stage", "02_embedding_init", None, None),
        ("04_stage2_lm_head-step-000050", "checkpoint", "04_stage2_lm_head", 50, None),
        ("04_stage2_lm_head-step-000100", "checkpoint", "04_stage2_lm_head", 100, None),
        ("04_stage2_lm_head", "stage", "04_stage2_lm_head", 100, "04_stage2_lm_head-step-000100")]
    assert models[1].path == str(s4 / "checkpoints/step-000050/model")
    fake_model(s4 / "model", b"c")                           # different weights: evaluated on its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert E.stage_models(run, include_checkpoints=False)[-1] == E.ModelSpec(
            "04_stage2_lm_head", "stage", "04_stage2_lm_head", 100, str(s4 / "model"), None)
    assert [m.name for m in E.stage_models(run, "04, 02_embedding_init", include_checkpoints=False)] == [
        "04_stage2_lm_head", "02_embedding_init"]
    s6 = done(run / "06_instruction_tuning")                 # DPO after SFT: sft_model/ is a row too
    fake_model(s6 / "checkpoints/step-000300/model", b"s")
    fake_model(s6 / "sft_model", b"s")
    fake_model(s6 / "model", b"d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        six = [(m.name, m.kind, m.step, m.same_as) for m in E.stage_models(run, "06")]
        assert six == [("06_instruction_tuning-step-000300", "checkpoint", 300, None),
                       ("06_instruction_tuning-sft", "stage", 300, "06_instruction_tuning-step-000300"),
                       ("06_instruction_tuning", "stage", 300, None)]
        assert [m.name for m in E.stage_models(run, "06", include_checkpoints=False)] == [
            "06_instruction_tuning-sft", "06_instruction_tuning"]
    with pytest.raises(FileNotFoundError, match="is not finished"):
        E.stage_models(run, ["05"])
    with pytest.raises(FileNotFoundError, match="has no model/"):
        E.stage_models(run, "01_vocab_merge")
    with pytest.raises(FileNotFoundError, match="names no stage folder"):
        E.stage_models(run, "09")


def test_baseline_names():
    hub = E.baseline_models(["toy", "EleutherAI/polyglot-ko-1.3b"],
                            lambda s: "/x/run/00_toy_world/model" if s == "toy" else s)
    assert [m.name for m in hub] == ["baseline-toy", "baseline-EleutherAI--polyglot-ko-1.3b"]
    assert hub[1].path == "EleutherAI/polyglot-ko-1.3b" and hub[0].kind == "baseline" and hub[0].stage is None
    twice = E.unique_names(hub + hub[:1])
    assert [m.name for m in twice] == ["baseline-toy", "baseline-EleutherAI--polyglot-ko-1.3b", "baseline-toy-2"]


# ---------------------------------------------------------------------------- real lm-eval runs


def direct_logliks(model_dir: Path, prompt: str, options: list[str]) -> list[float]:
    """Sum of log-softmax over each option's tokens after the prompt, one sequence at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for opt in options:
        ctx = tok(prompt)["input_ids"]
        whole = tok(prompt + " " + opt)["input_ids"]
        assert whole[:len(ctx)] == ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
        out.append(sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
    return out


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_harness_run_logs_resume_and_reuse(tmp_path, tiny_assets, monkeypatch):
    pairs = ET.write_tasks({"tiny": arc_pair(tmp_path / "data", ko_order=[3, 1, 0, 2, 5, 4])}, tmp_path / "st" / "tasks")
    run = tmp_path / "run"
    ckpt = run / "04_stage2_lm_head/checkpoints/step-000002/model"
    shutil.copytree(tiny_assets["model"], ckpt)
    shutil.copytree(ckpt, run / "04_stage2_lm_head/model")
    done(run / "04_stage2_lm_head")
    models = E.baseline_models([str(tiny_assets["model"])], str) + E.stage_models(run)
    name = E.baseline_name(str(tiny_assets["model"]), str(tiny_assets["model"]))
    assert [m.name for m in models] == [name, "04_stage2_lm_head-step-000002", "04_stage2_lm_head"]
    assert name == f"baseline-{tiny_assets['model'].parent.name}-model"
    sd = tmp_path / "st"
    manifest = E.evaluate_all(models, pairs, sd, device="cpu", batch_size=4, progress=False)

    assert read_jsonl_manifest(sd) == manifest
    base = manifest[0]
    assert set(base) == {"name", "kind", "stage", "step", "path", "tasks", "seconds", "precision"}
    assert base["precision"] == "float32"                      # how 07 scored it (precision auto, CPU)
    assert base["kind"] == "baseline" and base["stage"] is None and base["seconds"] > 0
    for lang in ET.LANGS:
        t = base["tasks"]["tiny"][lang]
        assert t["n"] == 6 and 0 <= t["acc"] <= 1 and 0 <= t["acc_norm"] <= 1
        assert Path(t["samples"]).is_file() and len(read_jsonl(t["samples"])) == 6
    res = json.loads((sd / "results" / name / "results_tiny.json").read_text())
    assert res["results"]["tiny_ko"]["acc,none"] == base["tasks"]["tiny"]["ko"]["acc"]
    assert res["n-samples"]["tiny_en"]["effective"] == 6

    # the prompt format: lm-eval's log-likelihoods equal a direct computation with the model
    for lang, prompt in (("en", "Question: What does the cat like?\nAnswer:"), ("ko", "질문: 고양이는 무엇을 좋아해요?\n정답:")):
        s = next(r for r in read_jsonl(base["tasks"]["tiny"][lang]["samples"]) if r["doc"]["id"] == "q2")
        options = arc_records(lang)[1]["choices"]["text"]
        # the three options after the prompt, then after an empty prompt (acc_mutual_info: the calibrated rule)
        assert [a[0] for a in s["arguments"]] == [prompt] * 3 + [""] * 3
        assert [a[1] for a in s["arguments"]] == [" " + o for o in options] * 2
        logged = [r[0] for r in s["filtered_resps"]][:3]
        # the tiny pair's option lengths agree across languages (length-control kappa's lower bound
        # 0.28 >= 0.15), so its default rule is the calibrated one (lib.rules.default_rule)
        assert set(s["chosen"]) == {"acc", "per_token", "acc_norm", "calibrated"} and s["rule"] == "calibrated"
        assert s["chosen"]["acc"]["index"] == max(range(3), key=logged.__getitem__)
        assert logged == pytest.approx(direct_logliks(tiny_assets["model"], prompt, options), abs=1e-4)
    # 08 reads the logs with lib.analysis.agreement; the languages join by doc id
    items = ag.join_by_id(samples.read_lm_eval_samples(base["tasks"]["tiny"]["en"]["samples"]),
                          samples.read_lm_eval_samples(base["tasks"]["tiny"]["ko"]["samples"]))
    assert len(items) == 6 and [it.gold for it in items] == [0, 1, 3, 0, 2, 1]

    # identical weights: the final model reuses its last checkpoint's results (copied, not rescored)
    ck, final = manifest[1], manifest[2]
    assert final["seconds"] == 0.0 and final["step"] == 2 and final["kind"] == "stage"
    assert {k: v["acc"] for k, v in final["tasks"]["tiny"].items()} == {k: v["acc"] for k, v in ck["tasks"]["tiny"].items()}
    assert Path(final["tasks"]["tiny"]["ko"]["samples"]).parent.name == "04_stage2_lm_head"
    assert {k: v["acc"] for k, v in ck["tasks"]["tiny"].items()} == {k: v["acc"] for k, v in base["tasks"]["tiny"].items()}

    # resume: nothing is evaluated again ...
    def boom(*a, **k):
        raise AssertionError("evaluated again")
    real = E.evaluate_model
    monkeypatch.setattr(E, "evaluate_model", boom)
    assert E.evaluate_all(models, pairs, sd, device="cpu", progress=False) == manifest
    # ... unless the settings changed
    with pytest.raises(AssertionError, match="evaluated again"):
        E.evaluate_all(models, pairs, sd, device="cpu", limit=3, progress=False)

    # incremental: a new pair is scored alone for every model; the stored one is kept as it is
    scored = []
    def spy(m, todo, *a, **k):
        scored.append((m.name, sorted(todo)))
        return real(m, todo, *a, **k)
    monkeypatch.setattr(E, "evaluate_model", spy)
    kept_log = Path(base["tasks"]["tiny"]["en"]["samples"]).read_text(encoding="utf-8")
    more = ET.write_tasks({"tiny": arc_pair(tmp_path / "data", ko_order=[3, 1, 0, 2, 5, 4]),
                           "tiny2": arc_pair(tmp_path / "data2")}, sd / "tasks")
    grown = E.evaluate_all(models, more, sd, device="cpu", batch_size=4, progress=False)
    assert scored == [(name, ["tiny2"]), ("04_stage2_lm_head-step-000002", ["tiny2"]),
                      ("04_stage2_lm_head", ["tiny2"])]
    assert [sorted(e["tasks"]) for e in grown] == [["tiny", "tiny2"]] * 3
    assert grown[0]["tasks"]["tiny"] == base["tasks"]["tiny"]
    assert Path(base["tasks"]["tiny"]["en"]["samples"]).read_text(encoding="utf-8") == kept_log
    # a changed existing task is refused (nothing scored) unless asked; then only it is scored
    spec2 = arc_pair(tmp_path / "data2")
    rows = arc_records("en")
    rows[0]["question"] = "Where does Minsu live now?"
    write_jsonl(tmp_path / "data2" / "arc_en.jsonl", rows)
    edited = ET.write_tasks({"tiny": arc_pair(tmp_path / "data", ko_order=[3, 1, 0, 2, 5, 4]), "tiny2": spec2},
                            sd / "tasks")
    scored.clear()
    with pytest.raises(E.ChangedTask, match="tiny2 changed .* rescore_changed: true"):
        E.evaluate_all(models, edited, sd, device="cpu", batch_size=4, progress=False)
    assert scored == []
    E.evaluate_all(models, edited, sd, device="cpu", batch_size=4, progress=False, rescore_changed=True)
    assert [t for _, t in scored] == [["tiny2"]] * 3
    ET.write_tasks({"tiny": arc_pair(tmp_path / "data", ko_order=[3, 1, 0, 2, 5, 4])}, sd / "tasks")

    rows = E.table_rows(manifest)
    assert [r["model"] for r in rows] == [m.name for m in models] and rows[0]["n"] == 6
    csv_path, md_path = E.write_tables(rows, sd)
    assert csv_path.read_text().splitlines()[0] == ",".join(E.TABLE_COLUMNS)
    assert f"| {name} |" in md_path.read_text()
    E.accuracy_figure(rows, "tiny", pairs["tiny"].chance(), sd / "figures" / "acc_tiny.png")
    assert (sd / "figures" / "acc_tiny.png").stat().st_size > 0
    m = E.summary_metrics(manifest, pairs, rows)
    assert m["models"][0]["items"] == 12 and m["models"][0]["items_per_s"] > 0 and m["items_per_s"] > 0
    assert m["pairs"]["tiny"]["n"] == 6


def read_jsonl_manifest(sd: Path) -> list[dict]:
    return json.loads((sd / "evals.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_notebook_runs_headless_on_a_fake_run(tmp_path, tiny_assets):
    """The notebook end to end with Papermill: toy baseline, a 02 control and one stage, on the
    default tasks (the toy world's three question cells), metrics read back."""
    import papermill as pm

    from lib.core import paths
    run = tmp_path / "run"
    toy = done(run / "00_toy_world")
    shutil.copytree(tiny_assets["model"], toy / "model")
    for cell in ("knowledge", "bridge_heldout", "ghost"):
        write_jsonl(toy / f"eval/{cell}_en.jsonl", arc_records("en"))
        write_jsonl(toy / f"eval/{cell}_ko.jsonl", arc_records("ko"))
    from lib.world.files import TRAINING_FILES  # the default extra tasks read these (lib.eval.toyextra)
    for rel in TRAINING_FILES:
        (toy / rel).parent.mkdir(parents=True, exist_ok=True)
        (toy / rel).write_text('{"instruction": "The cat sees the apple."}\n' if rel.endswith(".jsonl")
                               else "The cat sees the apple.\n", encoding="utf-8")
    (toy / "data/heldout_pairs.en").write_text("The dog finds the river.\nThe child paints the house.\n")
    (toy / "data/heldout_pairs.ko").write_text("개가 강을 찾는다.\n아이가 집을 칠한다.\n", encoding="utf-8")
    stage = done(run / "02_embedding_init")
    shutil.copytree(tiny_assets["model"], stage / "model")
    shutil.copytree(tiny_assets["model"], stage / "controls/oracle/model")
    (stage / "controls/controls.json").write_text(json.dumps([{"name": "oracle", "path": "oracle/model"}]))
    pm.execute_notebook(str(paths.notebook_path("07_benchmark_eval")), str(tmp_path / "07.ipynb"),
                        parameters={"run": str(run), "limit": 4, "batch_size": 8},
                        cwd=str(paths.NOTEBOOKS), progress_bar=False)
    sd = run / "07_benchmark_eval"
    assert (sd / "DONE").exists() and (sd / "figures" / "acc_knowledge.png").exists()
    m = json.loads((sd / "metrics.json").read_text())
    assert [(r["model"], r["pair"], r["n"]) for r in m["rows"] if r["pair"] == "knowledge"] == [
        ("baseline-toy", "knowledge", 4), ("control-oracle", "knowledge", 4), ("02_embedding_init", "knowledge", 4)]
    entries = read_jsonl_manifest(sd)
    assert [(e["name"], e["kind"]) for e in entries] == [("baseline-toy", "baseline"), ("control-oracle", "control"),
                                                         ("02_embedding_init", "stage")]
    assert sorted(entries[1]["tasks"]) == ["bridge_heldout", "ghost", "knowledge"]
    # the default extra tasks: the toy world's English and Korean minimal pairs, for every model
    assert [(r["model"], r["task"], r["lang"], r["n"]) for r in m["extra_tasks"]["rows"]][:2] == [
        ("baseline-toy", "toy_en_syntax", "en", 2), ("baseline-toy", "toy_ko_syntax", "ko", 2)]
    assert len(m["extra_tasks"]["rows"]) == 6 and all(0 <= r["value"] <= 1 for r in m["extra_tasks"]["rows"])


# ---------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_real_pairs_join_one_to_one(shared_data):
    bench = shared_data / "bench"
    en, ko = ET.load_pair({"en": str(bench / "arc_challenge/en_test.jsonl"),
                           "ko": str(bench / "arc_challenge/ko_test.jsonl"), "format": "arc"})
    assert len(en) == len(ko) == 1172 and all(a["id"] == b["id"] for a, b in zip(en, ko))
    assert {len(r["choices"]["text"]) for r in en} == {3, 4, 5}
    assert sum(r["choices"]["label"] == ["1", "2", "3", "4"] for r in en) == 21   # numeric labels load too
    assert ET.prompt("arc", "ko", ko[0]).startswith("질문: ") and ET.prompt("arc", "ko", ko[0]).endswith("\n정답:")
    en, ko = ET.load_pair({"en": "{shared}/bench/belebele/eng_Latn.jsonl",
                           "ko": "{shared}/bench/belebele/kor_Hang.jsonl", "format": "belebele"})
    assert len(en) == len(ko) == 900 and len({r["id"] for r in en}) == 900
    assert all(ET.gold("belebele", a) == ET.gold("belebele", b) for a, b in zip(en, ko))
