"""Fault injection: a run that fails fails in seconds, says why in one line, corrupts nothing.

Each case a user can trip (issue 17) is reproduced here: bad values and files caught by `check`
before any work, CLI and path hygiene, two runs on one folder, a dead kernel, a full disk, a
read-only folder, an interruption, a truncated checkpoint. Profile checks run on the micro profile
(extended) or on the tiny fixtures of conftest; stage failures run a one-cell stand-in notebook
(a second or two per kernel) instead of a real stage, since the fault is in the runner, not in
the stage.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import EN_LINES, KO_LINES

from lib.cli.pipeline import main
from lib.core import paths
from lib.core.params import load_profile
from lib.run import failures
from lib.run.check import check_profile
from lib.run.stages import select_stages


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(capsys) -> str:
    return one_line(capsys.readouterr().err)


def one_line(err: str) -> str:
    """The one ``error:`` line a failed command ends with (progress bars aside, no traceback)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# ---------------------------------------------------------------------------- check: values

def test_check_lists_every_bad_value_of_a_micro_profile_at_once(tmp_path):
    f = write(tmp_path / "bad.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n"
              "common:\n  device: gpu\n"
              "02_embedding_init:\n  init: oracle_typo\n"
              "03_stage1_contrastive:\n  steps: -5\n  pooling: max\n  temperature: .nan\n"
              "05_stage3_pretrain:\n  ko_ratio: 1.5\n  method: adapters\n"
              "07_benchmark_eval:\n  tasks: {toy_arc: {en: a.jsonl, ko: b.jsonl, format: mmlu}}\n"
              "08_agreement_analysis:\n  prediction: acc_max\n"
              "04_stage2_lm_head:\n  init_from: 05_stage3_pretrain\n")
    prof = load_profile(f)
    t0 = time.time()
    problems = check_profile(prof, select_stages(prof))
    assert time.time() - t0 < 20
    want = [f"{f}:3: common.device (for 02_embedding_init, ",
            f"{f}:5: 02_embedding_init.init: must be one of subword_mean, mean, ",
            f"{f}:7: 03_stage1_contrastive.steps: steps and grad_accum must be >= 1, got -5, 1",
            f"{f}:8: 03_stage1_contrastive.pooling: must be one of mean, last, got 'max'",
            f"{f}:9: 03_stage1_contrastive.temperature: must be a finite number, got nan",
            f"{f}:11: 05_stage3_pretrain.ko_ratio: must be >= 0 and <= 1, got 1.5",
            f"{f}:12: 05_stage3_pretrain.method: must be one of full, lora, qlora, got 'adapters'",
            f"{f}:14: 07_benchmark_eval.tasks: unknown format 'mmlu'",
            f"{f}:16: 08_agreement_analysis.prediction: prediction must be one of auto, acc, per_token, acc_norm, calibrated",
            f"{f}:18: 04_stage2_lm_head.init_from: '05_stage3_pretrain' is not an earlier stage"]
    for w in want:
        assert any(p.startswith(w) for p in problems), (w, problems)
    # device is set in common: reported once, naming every stage that takes it; nothing else
    assert [p for p in problems if "common.device" in p] == [
        f"{f}:3: common.device (for 02_embedding_init, 03_stage1_contrastive, 04_stage2_lm_head, "
        f"05_stage3_pretrain, 06_instruction_tuning, 07_benchmark_eval, 08_agreement_analysis): must be "
        f"auto, cpu, cuda or cuda:N, got 'gpu'"]
    assert len(problems) == len(want)


def test_check_takes_init_methods_from_the_stage(tmp_path, monkeypatch):
    """A value the stage learns later (another init method) is accepted without touching check."""
    import lib.vocab.resize
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n02_embedding_init:\n  init: later\n")
    prof = load_profile(f)
    (problem,) = check_profile(prof, select_stages(prof))
    allowed = ", ".join(lib.vocab.resize.INIT_METHODS + ("oracle", "oracle_deranged"))    # + 02's controls
    assert problem == f"{f}:3: 02_embedding_init.init: must be one of {allowed}, got 'later'"
    monkeypatch.setattr(lib.vocab.resize, "INIT_METHODS", lib.vocab.resize.INIT_METHODS + ("later",))
    assert check_profile(prof, select_stages(prof)) == []


def test_shipped_toy_and_micro_profiles_check_clean():
    for name in ("toy.yaml", "micro.yaml"):
        prof = load_profile(paths.PARAMS / name)
        assert check_profile(prof, select_stages(prof)) == [], name


def test_check_a6000_without_data_lists_every_missing_file_in_seconds(capsys):
    if (paths.PROJ_ROOT / "data" / "parallel").exists():
        pytest.skip("data/ holds real files here")
    t0 = time.time()
    assert main(["check", "params/a6000.yaml"]) == 1
    took = time.time() - t0
    err = capsys.readouterr().err
    missing = {line.split("file not found: ")[1].split(" ")[0]
               for line in err.splitlines() if "file not found" in line}
    want = {"data/kobert/tokenizer.model", "data/samples/ko.txt", "data/samples/en.txt",
            "data/parallel/train.ko", "data/parallel/train.en", "data/parallel/heldout.ko",
            "data/parallel/heldout.en", "data/mono/ko.txt", "data/mono/en.txt",
            "data/bench/arc_challenge/en_test.jsonl", "data/bench/arc_challenge/ko_test.jsonl"}
    assert {str(paths.PROJ_ROOT / w) for w in want} <= missing
    assert "06_instruction_tuning.data_files" in err       # {toy} without a toy stage: named too
    assert took < 30, took


# ---------------------------------------------------------------------------- check: files

def tiny_profile(tmp_path, assets, body: str) -> Path:
    return write(tmp_path / "p.yaml", f"common:\n  base_model: {assets['model']}\n  seed: 3\n{body}")


def pair(tmp_path, n: int = 20) -> tuple[Path, Path]:
    """Line-aligned Korean / English files of ``n`` lines."""
    return (write(tmp_path / "pair.ko", "\n".join(KO_LINES[:n]) + "\n"),
            write(tmp_path / "pair.en", "\n".join(EN_LINES[:n]) + "\n"))


def test_swapped_korean_and_english_pairs_are_caught(tmp_path, tiny_assets):
    ko, en = pair(tmp_path)
    f = tiny_profile(tmp_path, tiny_assets, "03_stage1_contrastive:\n"
                     f"  pairs_ko: {en}\n  pairs_en: {ko}\n  heldout_ko: {ko}\n  heldout_en: {en}\n")
    problems = check_profile(load_profile(f), ["03_stage1_contrastive"])
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{f}:5: 03_stage1_contrastive.pairs_ko: {en} should be "
                                  f"Korean but reads as English (Hangul is 0% of its letters")
    assert "are the Korean and English files swapped?" in problems[0]
    assert problems[1].startswith(f"{f}:6: 03_stage1_contrastive.pairs_en: {ko} should be English "
                                  f"but reads as Korean (Hangul is 100% of its letters")



def test_corpus_parameters_take_jsonl_and_hub_forms(tmp_path, tiny_assets, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):      # online: a Hub id is the stage's to download
        monkeypatch.delenv(var, raising=False)
    ko, en = pair(tmp_path)
    ko_jl = write(tmp_path / "ko.jsonl", "".join(json.dumps({"body": l}, ensure_ascii=False) + "\n" for l in KO_LINES[:20]))
    good = tiny_profile(tmp_path, tiny_assets, "05_stage3_pretrain:\n"
                        f"  ko_text: '{ko_jl}#body'\n  en_text: hub:allenai/c4/en/train\n"
                        f"  heldout_ko: {ko}\n  heldout_en: {en}\n")
    assert check_profile(load_profile(good), ["05_stage3_pretrain"]) == []
    bad = tiny_profile(tmp_path, tiny_assets, "05_stage3_pretrain:\n"
                       f"  ko_text: {ko_jl}\n  en_text: 'hub:c4'\n  code_switch_ratio: 0.2\n"
                       f"  heldout_ko: {ko}\n  heldout_en: {en}\n")
    problems = check_profile(load_profile(bad), ["05_stage3_pretrain"])
    assert any(f"05_stage3_pretrain.ko_text: {ko_jl}, line 1: a record needs a string field 'text'" in p
               for p in problems), problems
    assert any("05_stage3_pretrain.en_text: 'hub:c4' is not 'hub:<dataset>/<config>/<split>[#field]'" in p
               for p in problems), problems
    assert any("05_stage3_pretrain.code_switch_ratio: code-switching rewrites text files line by line, "
               f"but ko_text is '{ko_jl}'" in p for p in problems), problems

def test_hub_specs_that_cannot_be_had_are_named_before_any_work(tmp_path, monkeypatch, capsys):
    """Offline, a hub: split in neither local cache fails ``check`` and ``run`` in seconds, naming
    the file, line and key (not 05 after 03 and 04 ran, after a minute of retries); so does a local
    hub: folder that does not exist. Cached, or online, the Hub id passes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n05_stage3_pretrain:\n"
              f"  en_text: hub:allenai/c4/en/train\n  ko_text: 'hub:{tmp_path}/nowhere//train#body'\n"
              "07_benchmark_eval:\n  tasks+:\n    arc: {en: hub:allenai/ai2_arc/ARC-Challenge/test, "
              "ko: data/none.jsonl, format: arc}\n")
    caches = f"{tmp_path / 'datasets'} or {tmp_path / 'hub'}"
    want = [f"error: {f}:4: 05_stage3_pretrain.ko_text: 'hub:{tmp_path}/nowhere//train#body': {tmp_path}/nowhere "
            f"does not exist (a hub: spec that is a path reads a local dataset folder): give an existing folder, "
            f"or a local file",
            f"error: {f}:3: 05_stage3_pretrain.en_text: 'hub:allenai/c4/en/train': the dataset allenai/c4 is not in "
            f"the local Hugging Face cache ({caches}) and HF_HUB_OFFLINE is set, so the stage could not download "
            "it: load it once online (datasets.load_dataset('allenai/c4', 'en', split='train')) or give a local file",
            f"error: {f}:6: 07_benchmark_eval.tasks+: tasks['arc']['en']: 'hub:allenai/ai2_arc/ARC-Challenge/test': "
            f"the dataset allenai/ai2_arc is not in the local Hugging Face cache ({caches}) and HF_HUB_OFFLINE is set"]
    t0 = time.time()
    assert main(["check", str(f)]) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert errors[:2] == want[:2] and errors[2].startswith(want[2]) and len(errors) == 4, errors   # + ko: file not found
    run = tmp_path / "run"
    assert main(["run", str(f), "--run", str(run)]) == 1
    assert not run.exists() or not any(p.name[:2].isdigit() for p in run.iterdir())     # nothing ran
    assert time.time() - t0 < 30
    # in the datasets cache (prepared) or in the Hub cache (downloaded): found; online: the stage's to fetch
    (tmp_path / "datasets" / "allenai___c4" / "en" / "0.0.0" / "abc123").mkdir(parents=True)
    (tmp_path / "hub" / "datasets--allenai--ai2_arc" / "snapshots" / "abc123").mkdir(parents=True)
    prof = load_profile(f)
    problems = check_profile(prof, select_stages(prof))
    assert [p.split(": ")[1] for p in problems] == ["05_stage3_pretrain.ko_text", "07_benchmark_eval.tasks+"]
    shutil.rmtree(tmp_path / "datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert len(check_profile(prof, select_stages(prof))) == 2


def arc(path: Path, lang: str, n: int = 3) -> Path:
    q = {"en": "Which animal sees the river", "ko": "어느 동물이 강을 보나요"}[lang]
    opts = {"en": ["cat", "dog"], "ko": ["고양이", "개"]}[lang]
    recs = [{"id": f"q{i}", "question": f"{q} {i}?", "choices": {"text": opts, "label": ["A", "B"]},
             "answerKey": "A"} for i in range(n)]
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


def test_swapped_benchmark_sides_and_bad_records_are_caught(tmp_path, tiny_assets):
    en, ko = arc(tmp_path / "en.jsonl", "en"), arc(tmp_path / "ko.jsonl", "ko")
    f = tiny_profile(tmp_path, tiny_assets, "07_benchmark_eval:\n  baselines: []\n  extra_tasks: {}\n"
                     f"  tasks: {{t: {{en: {ko}, ko: {en}, format: arc}}}}\n")
    problems = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert [p.split(": ", 2)[1] for p in problems] == ["07_benchmark_eval.tasks"] * 2
    assert f"{ko} should be English but reads as Korean" in problems[0]
    assert f"{en} should be Korean but reads as English" in problems[1]
    # the right way round it is clean; a record without answerKey is named by file and line
    f = tiny_profile(tmp_path, tiny_assets, "07_benchmark_eval:\n  baselines: []\n  extra_tasks: {}\n"
                     f"  tasks: {{t: {{en: {en}, ko: {ko}, format: arc}}}}\n")
    assert check_profile(load_profile(f), ["07_benchmark_eval"]) == []
    lines = ko.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[1])
    del rec["answerKey"]
    write(ko, "\n".join([lines[0], json.dumps(rec, ensure_ascii=False), lines[2]]) + "\n")
    (problem,) = check_profile(load_profile(f), ["07_benchmark_eval"])
    assert f"{ko}:2: a 'arc' record needs ['answerKey']" in problem


def test_misaligned_parallel_files_and_missing_corpus_rule(tmp_path, tiny_assets):
    a = tiny_assets
    ko, en = pair(tmp_path)
    short = write(tmp_path / "short.en", "\n".join(EN_LINES[:5]) + "\n")
    f = tiny_profile(tmp_path, a, "03_stage1_contrastive:\n"
                     f"  pairs_ko: {ko}\n  pairs_en: {short}\n  heldout_ko: {ko}\n  heldout_en: {en}\n"
                     "01_vocab_merge:\n  korean_tokenizer: ''\n"
                     f"  sample_ko: {a['sample_ko']}\n  sample_en: {a['sample_en']}\n")
    problems = check_profile(load_profile(f), ["01_vocab_merge", "03_stage1_contrastive"])
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{f}:10: 01_vocab_merge.korean_tokenizer: is empty and so is korean_corpus")
    assert problems[1] == (f"{f}:5: 03_stage1_contrastive.pairs_ko: misaligned parallel files: "
                           f"{ko} has 20 lines but {short} has 5; line i of one must "
                           f"translate line i of the other")


def test_merging_a_tokenizer_with_itself_is_refused_naming_both(tmp_path, tiny_assets):
    a = tiny_assets
    f = tiny_profile(tmp_path, a, f"01_vocab_merge:\n  korean_tokenizer: {a['base_sp']}\n"
                     f"  sample_ko: {a['sample_ko']}\n  sample_en: {a['sample_en']}\n")
    (problem,) = check_profile(load_profile(f), ["01_vocab_merge"])
    assert problem.startswith(f"{f}:5: 01_vocab_merge.korean_tokenizer: merging {a['base_sp']} into "
                              f"{a['model']} adds no pieces")
    # the stage itself refuses too (a tokenizer that only exists once the run has started)
    from lib.vocab import merge as T
    sp = T.load_sp_model(a["base_sp"])
    with pytest.raises(ValueError, match=r"merging ko.model into base.model adds no pieces"):
        T.merge_sp(sp, sp, names=("base.model", "ko.model"))


def test_bom_is_stripped_from_params_text_and_jsonl(tmp_path, tiny_assets):
    from lib.core.readers import read_lines
    from lib.data.instructions import read_records
    from lib.eval.tasks import read_local
    f = tmp_path / "p.yaml"
    f.write_bytes(b"\xef\xbb\xbfcommon:\n  seed: 5\n")
    assert load_profile(f).common() == {"seed": 5}
    t = tmp_path / "ko.txt"
    t.write_bytes(b"\xef\xbb\xbf" + "고양이가 본다\n".encode())
    assert read_lines(t) == ["고양이가 본다"]
    j = tmp_path / "a.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + b'{"id": "1"}\n')
    assert read_local(j) == [(f"{j}:1", {"id": "1"})]
    i = tmp_path / "i.jsonl"
    i.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "hi", "output": "ok"}\n')
    assert read_records(i)[0]["instruction"] == "hi"


def test_empty_params_file_and_duplicate_keys_are_errors(tmp_path, capsys):
    f = write(tmp_path / "empty.yaml", "# nothing here\n")
    assert main(["check", str(f)]) == 1
    assert one_line_error(capsys) == (f"error: {f}: the params file is empty; give at least one section "
                                      f"(e.g. 'extends: toy.yaml' or 'common:')")
    f = write(tmp_path / "dup.yaml", "common:\n  seed: 1\n03_stage1_contrastive:\n  steps: 5\n  lr: 0.1\n"
                                     "  steps: 50\n")
    assert main(["check", str(f)]) == 1
    assert one_line_error(capsys) == (f"error: {f}:6: key 'steps' is given twice (first on line 4); YAML "
                                      f"would keep only the last one. Remove one.")


# ---------------------------------------------------------------------------- CLI hygiene

@pytest.mark.parametrize("args, message", [
    (["--run", "../escape"], "--run ../escape: a run name must stay inside"),
    (["--run", "a/../../escape"], "a run name must stay inside"),
    (["--run", str(paths.PROJ_ROOT)], "this would write stage folders into"),
    (["--only", ""], "--only '' names no stage"),
    (["--only", " , "], "names no stage"),
    (["--only", "42"], "--only 42: no stage 42"),
    (["--from", "9"], "--from '9' is not a stage"),
    (["--from", ""], "--from '' is not a stage"),
])
def test_cli_refuses_bad_run_names_and_empty_selections(args, message, capsys, tmp_path):
    before = sorted(p.name for p in paths.PROJ_ROOT.iterdir())
    assert main(["run", "params/micro.yaml", *args]) == 1
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in paths.PROJ_ROOT.iterdir()) == before
    assert not (paths.PROJ_ROOT / "escape").exists() and not (paths.PROJ_ROOT.parent / "escape").exists()


# ---------------------------------------------------------------------------- one writer

HOLD = ("import sys, time\nfrom lib.core.runfolder import run_lock\n"
        "with run_lock(sys.argv[1], 'the holder'):\n    print('held', flush=True)\n    time.sleep(120)\n")


def hold_lock(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                         cwd=paths.PROJ_ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_on_a_run_folder_is_refused_naming_the_holder(tmp_path, tiny_assets, capsys):
    run = tmp_path / "run"
    f = tiny_profile(tmp_path, tiny_assets, "04_stage2_lm_head:\n  report_to: none\n  steps: 2\n"
                     f"  text: {tiny_assets['sample_ko']}\n  heldout_ko: {tiny_assets['sample_ko']}\n"
                     f"  heldout_en: {tiny_assets['sample_en']}\n")
    holder = hold_lock(run)
    try:
        t0 = time.time()
        assert main(["run", str(f), "--run", str(run), "--only", "04"]) == 1
        err = one_line_error(capsys)
        assert err.startswith(f"error: {run} is in use by PID {holder.pid} (the holder, since ")
        assert err.endswith("wait for it to finish, or give this run another --run name")
        from lib.cli.train import main as train_main
        assert train_main(["04", str(f), "--run", str(run)]) == 1
        assert f"is in use by PID {holder.pid}" in one_line_error(capsys)
        assert time.time() - t0 < 15
        assert sorted(p.name for p in run.iterdir()) == [".lock"]       # nothing was touched
    finally:
        holder.kill()
        holder.wait()
    # killed, not cleaned up: the kernel released the lock, a new writer gets it at once
    from lib.core.runfolder import run_lock
    with run_lock(run) as lock:
        assert lock.read_text().startswith(f"PID {os.getpid()} ")


def test_a_notebook_run_by_hand_is_refused_while_a_run_holds_the_folder(tmp_path, monkeypatch):
    from lib.core.params import notebook_params
    from lib.core.runfolder import HELD_ENV, RunLocked
    from lib.core.stage import resolve
    monkeypatch.delenv(HELD_ENV, raising=False)
    run = tmp_path / "run"
    ns = {name: p.default for name, p in notebook_params("01_vocab_merge").items()}
    ns["run"] = str(run)
    holder = hold_lock(run)
    try:
        with pytest.raises(RunLocked, match=rf"{run} is in use by PID {holder.pid} \(the holder"):
            resolve("01_vocab_merge", ns)
        assert not (run / "01_vocab_merge").exists()
        monkeypatch.setenv(HELD_ENV, str(run.resolve()))      # a kernel the holder started
        assert resolve("01_vocab_merge", ns).stage_dir.exists()
    finally:
        holder.kill()
        holder.wait()


def head_profile(tmp_path, a) -> Path:
    """A tiny profile whose stage 04 reads the tiny assets' samples (for ``python -m lib.train 04``)."""
    return tiny_profile(tmp_path, a, f"04_stage2_lm_head:\n  text: {a['sample_ko']}\n"
                        f"  heldout_ko: {a['sample_ko']}\n  heldout_en: {a['sample_en']}\n")


def test_lib_train_holds_the_lock_while_it_trains(tmp_path, tiny_assets, monkeypatch):
    from lib.cli.train import main as train_main
    from lib.core.runfolder import RunLocked, run_lock
    from lib.train import head

    def fake_run(cfg):                  # the stage itself, as a second writer would see the folder
        try:
            with run_lock(cfg.run_dir):
                return {"lock_held": False}
        except RunLocked as e:
            return {"lock_held": str(e).startswith(f"{cfg.run_dir} is in use by PID {os.getpid()} "
                                                   f"(python -m lib.train 04 p.yaml")}
    monkeypatch.setattr(head, "run", fake_run)
    f, run = head_profile(tmp_path, tiny_assets), tmp_path / "run"
    assert train_main(["04", str(f), "--run", str(run)]) == 0
    assert json.loads((run / "04_stage2_lm_head" / "metrics.json").read_text()) == {"lock_held": True}


def test_lib_train_ends_a_failed_stage_in_one_line_and_keeps_the_traceback(tmp_path, tiny_assets, monkeypatch,
                                                                          capsys):
    """Not the input but the stage itself fails (out of memory, a bug, a full disk): one ``error:``
    line with the cause as the pipeline words it, exit 1, the traceback in the stage folder."""
    from lib.cli.train import main as train_main
    from lib.run import failures
    from lib.train import head

    def boom(cfg):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(head, "run", boom)
    f, run = head_profile(tmp_path, tiny_assets), tmp_path / "run"
    assert train_main(["04", str(f), "--run", str(run)]) == 1
    tb = run / "04_stage2_lm_head" / "traceback.txt"
    assert one_line_error(capsys) == ("error: 04_stage2_lm_head failed: RuntimeError: CUDA out of memory. "
                                      f"Tried to allocate 2.00 GiB (traceback in {tb})")
    assert "in boom" in tb.read_text() and not (run / "04_stage2_lm_head" / "DONE").exists()
    monkeypatch.setattr(failures, "free_bytes", lambda folder: 4096)        # the same failure on a full disk
    assert train_main(["04", str(f), "--run", str(run)]) == 1
    assert f"04_stage2_lm_head failed: the disk is full ({run} has 4,096 bytes free): " in one_line_error(capsys)


# ---------------------------------------------------------------------------- stage failures

STANDIN = '''\
import errno, json, os, signal
from pathlib import Path
from lib.core.hashing import config_hash
from lib.core.runfolder import RunLocked, run_lock
sd = Path(run) / "01_standin"
sd.mkdir(parents=True, exist_ok=True)
print("attempt", mode)
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)          # what the out-of-memory killer does
if mode == "nospace":
    raise OSError(errno.ENOSPC, "No space left on device", str(sd / "model.safetensors"))
if mode == "interrupt":
    raise KeyboardInterrupt
try:
    with run_lock(run):
        locked = False
except RunLocked:
    locked = True                                 # the runner holds the lock while the stage runs
(sd / "metrics.json").write_text(json.dumps({"lock_held_by_runner": locked}))
(sd / "DONE").write_text(json.dumps({"config_hash": config_hash({"run": run, "seed": seed, "mode": mode})}))
'''


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A notebooks folder holding one stand-in stage, 01_standin, whose ``mode`` picks the fault."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    params = nbformat.v4.new_code_cell('run = "x"  # run folder\nseed = 0  # seed\nmode = "ok"  # the fault')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(STANDIN)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbdir / "01_standin.ipynb"))
    monkeypatch.setattr(paths, "NOTEBOOKS", nbdir)

    def profile(mode: str) -> Path:
        return write(tmp_path / f"{mode}.yaml", f"01_standin:\n  mode: {mode}\n")
    return profile


def no_temp_files(run: Path) -> None:
    left = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not left, left


def test_dead_kernel_is_one_line_and_the_rerun_finishes(standin, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(standin("die")), "--run", str(run)]) == 1
    err = one_line_error(capsys)
    sd = run / "01_standin"
    assert err.startswith("error: 01_standin failed: the kernel died (out of memory? the system kills the "
                          "largest process when RAM or GPU memory runs out)")
    assert err.endswith(f"(notebook {sd / '01_standin.ipynb'}, log {sd / 'log.txt'})")
    json.loads((sd / "01_standin.ipynb").read_text())       # the kept notebook is valid JSON
    assert not (sd / "DONE").exists() and (run / "report.md").exists()
    no_temp_files(run)
    # the same folder again, now healthy: it runs, and the log keeps both attempts, no NUL bytes
    assert main(["run", str(standin("ok")), "--run", str(run)]) == 0
    assert json.loads((sd / "metrics.json").read_text()) == {"lock_held_by_runner": True}
    log = (sd / "log.txt").read_text()
    assert log.count("=== ") == 2 and "\0" not in log and "attempt ok" in log


@pytest.mark.parametrize("mode, cause, code", [
    ("nospace", "01_standin failed in cell 3: the disk is full ({run} has 0 bytes free): free space (or point "
                "KOLLAMA_OUTPUTS at a larger disk), then rerun the same command to resume "
                "(OSError: [Errno 28] No space left on device", 1),
    ("interrupt", "01_standin failed in cell 3: interrupted; nothing finished was lost: rerun the same "
                  "command to resume (notebook ", 130),
])
def test_cell_failures_are_one_line_in_words(standin, tmp_path, capsys, monkeypatch, mode, cause, code):
    monkeypatch.setattr(failures, "free_bytes", lambda folder: 0)
    run = tmp_path / "run"
    assert main(["run", str(standin(mode)), "--run", str(run)]) == code
    assert one_line_error(capsys).startswith(f"error: {cause.format(run=run)}")
    json.loads((run / "01_standin" / "01_standin.ipynb").read_text())
    no_temp_files(run)


def test_disk_full_while_saving_the_notebook_keeps_it_valid_and_the_error_visible(standin, tmp_path,
                                                                                   capsys, monkeypatch):
    """The disk fills up while the runner saves the executed notebook, and again while it writes
    the report: the stage's error is the one line printed, the notebook on disk is the last
    complete save (valid JSON), and no temp file is left."""
    import lib.run.report
    saves, real_write_text = [], Path.write_text

    def fill_disk(self, data, *a, **k):      # the third save of the notebook hits a full disk
        if self.name.startswith(".01_standin.ipynb.tmp"):
            saves.append(self)
            if len(saves) > 2:
                real_write_text(self, data[: len(data) // 2], *a, **k)
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, data, *a, **k)

    def report_full(run_dir, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(run_dir) / "report.md"))

    monkeypatch.setattr(Path, "write_text", fill_disk)
    monkeypatch.setattr(lib.run.report, "write_report", report_full)
    run = tmp_path / "run"
    assert main(["run", str(standin("ok")), "--run", str(run)]) == 1
    out = capsys.readouterr()
    assert one_line(out.err).startswith(f"error: 01_standin failed: the disk was full ({run} has ")
    assert f" free now; writing {run / '01_standin' / '.01_standin.ipynb.tmp'}" in out.err
    assert f"report not written (the disk was full ({run} has " in out.out
    json.loads((run / "01_standin" / "01_standin.ipynb").read_text())
    no_temp_files(run)


def test_a_tmp_file_is_never_left_behind(tmp_path, monkeypatch):
    from lib.core.io import write_json

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "replace", full)
    with pytest.raises(OSError):
        write_json(tmp_path / "metrics.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_read_only_outputs_folder_is_one_line(standin, tmp_path, capsys, monkeypatch):
    run = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if self == run or run in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["run", str(standin("ok")), "--run", str(run)]) == 1
    assert one_line_error(capsys).startswith(f"error: the file system is read-only (writing {run}): run into "
                                             f"a writable folder (--run or KOLLAMA_OUTPUTS)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(standin, tmp_path, capsys):
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o555)
    try:
        assert main(["run", str(standin("ok")), "--run", str(run)]) == 1
        assert "permission denied" in one_line_error(capsys)
    finally:
        run.chmod(0o755)


def test_causes_in_words():
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    assert failures.cause(DeadKernelError("Kernel died")).startswith("the kernel died (out of memory?")
    assert failures.cause(OSError(errno.EACCES, "Permission denied", "/x")).startswith(
        "permission denied (writing /x)")
    e = PapermillExecutionError(3, 4, "[Errno 28] No space left on device", "OSError",
                                "[Errno 28] No space left on device", [])
    assert failures.cause(e).startswith("in cell 4: the disk ")
    e = PapermillExecutionError(3, 4, "bad", "ValueError", "bad\nsecond line", [])
    assert failures.cause(e) == "in cell 4: ValueError: bad"
    try:
        try:
            raise e
        except PapermillExecutionError:
            raise OSError(errno.ENOSPC, "No space left on device", "/out/x.ipynb")   # saving it failed
    except OSError as chained:
        assert failures.cause(chained).startswith("the disk was full (/out has ")
        assert " free now; writing /out/x.ipynb): free space" in failures.cause(chained)


# ---------------------------------------------------------------------------- checkpoints

def test_truncated_optimizer_state_falls_back_to_the_previous_checkpoint(tmp_path, fresh_accelerate_state):
    """Only the latest checkpoint keeps its training state (issue 15); when a crash came between
    writing step 8 and pruning step 4's state, a truncated step 8 falls back to step 4 and ends
    bit-identical. When no stateful checkpoint reads back, one error names them and what to delete."""
    import shutil

    from test_train_loop import batch_at, lm_loss, tiny_llama

    from lib.train.loop import CorruptCheckpoint, Interrupted, TrainSpec, checkpoints, train
    spec = TrainSpec(steps=12, lr=1e-2, warmup_steps=2, save_every=4, report_to="none")
    ref = tiny_llama()
    train([ref], batch_at, lm_loss, spec, tmp_path / "ref")
    with pytest.raises(Interrupted):
        train([tiny_llama()], batch_at, lm_loss, spec, tmp_path / "res", stop_at=4)
    first = checkpoints(tmp_path / "res")[-1]
    shutil.copytree(first / "state", tmp_path / "state4")
    with pytest.raises(Interrupted):
        train([tiny_llama()], batch_at, lm_loss, spec, tmp_path / "res", stop_at=8)
    last = checkpoints(tmp_path / "res")[-1]
    assert last.name == "step-000008" and not (first / "state").exists()     # the older one was pruned
    shutil.copytree(tmp_path / "state4", first / "state")                    # ... as if the crash came first
    opt = last / "state" / "optimizer.bin"
    opt.write_bytes(opt.read_bytes()[:100])            # a crash / full disk mid-write
    resumed = tiny_llama()
    with pytest.warns(UserWarning, match=r"checkpoint .*step-000008 cannot be read back .*resuming from "
                                         r"the one before it"):
        r = train([resumed], batch_at, lm_loss, spec, tmp_path / "res")
    assert r["resumed_from"].endswith("step-000004")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    # every stateful checkpoint unreadable: one clear error naming it and what to delete
    for c in checkpoints(tmp_path / "res"):
        if (c / "state").exists():
            (c / "state" / "optimizer.bin").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpoint, match=(
            r"no checkpoint under .*res/checkpoints reads back: step-000012 .*"
            r"Delete .*res/checkpoints to start the stage afresh")):
        train([tiny_llama()], batch_at, lm_loss, spec, tmp_path / "res")


# ---------------------------------------------------------------------------- check: what the run will have (issue 27)

def test_check_counts_shared_stages_as_present(tmp_path, monkeypatch):
    """``pipeline.share`` links 00-02 from a finished run when the run starts: ``--only 05`` on a
    new run is not refused for the toy model, and {toy} files are looked for in the shared run."""
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    src = tmp_path / "outputs" / "src"
    for stage in ("00_toy_world", "01_vocab_merge", "02_embedding_init"):
        (src / stage).mkdir(parents=True)
        (src / stage / "DONE").write_text("{}")
    (src / "00_toy_world" / "data").mkdir()
    for name, lines in (("stage3_ko.txt", KO_LINES), ("stage3_en.txt", EN_LINES),
                        ("sample.ko", KO_LINES), ("sample.en", EN_LINES)):
        write(src / "00_toy_world" / "data" / name, "\n".join(lines) + "\n")
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n"
              "pipeline:\n  share: {run: src, stages: ['00', '01', '02']}\n"
              "05_stage3_pretrain:\n  heldout_ko: '{toy}/data/sample.ko'\n  heldout_en: '{toy}/data/sample.en'\n")
    prof = load_profile(f)
    assert check_profile(prof, select_stages(prof, only="05"), "new") == []
    shutil.rmtree(src / "00_toy_world" / "data")
    problems = check_profile(prof, select_stages(prof, only="05"), "new")
    assert problems and all(f"shared (pipeline.share) from {src / '00_toy_world'}, which lacks it" in p
                            for p in problems), problems


def test_a_wrong_base_model_is_one_line_naming_it(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):      # the message names the variable when set
        monkeypatch.delenv(var, raising=False)
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\ncommon:\n  base_model: tyo\n")
    prof = load_profile(f)
    (problem,) = check_profile(prof, select_stages(prof))
    assert problem.startswith(f"{f}:3: common.base_model (for 01_vocab_merge, ")
    assert problem.endswith(f"'tyo' is not 'toy', not a folder ({paths.PROJ_ROOT / 'tyo'} does not exist), and "
                            "not a Hub model in the local cache (Hub ids are owner/name, e.g. "
                            "meta-llama/Llama-3.2-1B): did you mean 'toy'?")


def test_composed_task_keys_are_named_at_their_line(tmp_path):
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n07_benchmark_eval:\n  tasks+:\n"
              "    extra: {en: nowhere_en.jsonl, ko: nowhere_ko.jsonl, format: mmlu}\n")
    prof = load_profile(f)
    (problem,) = check_profile(prof, select_stages(prof))
    assert problem.startswith(f"{f}:3: 07_benchmark_eval.tasks+: unknown format 'mmlu'")


def test_a_tokenizer_only_01_does_not_need_the_toy_model(tmp_path, tiny_assets):
    f = write(tmp_path / "p.yaml", f"extends: {paths.PARAMS / 'micro.yaml'}\n01_vocab_merge:\n"
              f"  base_tokenizer: {tiny_assets['base_sp']}\n  korean_tokenizer: {tiny_assets['ko_sp']}\n"
              f"  sample_ko: {tiny_assets['sample_ko']}\n  sample_en: {tiny_assets['sample_en']}\n")
    prof = load_profile(f)
    assert check_profile(prof, select_stages(prof, only="01"), "fresh_run") == []
