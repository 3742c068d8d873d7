"""lib.analysis.paired and lib.analysis.repviz on a hand-written fake of 07's output; notebook 08 headless.

The fake 07 folder holds lm-eval-0.4-style per-sample records whose predictions are chosen by
hand (the log-likelihoods and choice lengths are built to give them), so every accuracy,
agreement and kappa below is worked out in the comment next to it.
"""
from __future__ import annotations

import json
import math
import sys

import matplotlib.pyplot as plt
import pytest
from conftest import EN_LINES, KO_LINES

from lib.analysis import paired as an
from lib.analysis import repviz
from lib.core.stats import SPLITS

GOLD = [0, 1, 2, 3, 0, 1, 2, 3]
# Model A, acc_norm predictions per item (English, Korean):
#   q0-q3 both right; q4 both 1, q7 both 0 (both wrong, same); q5 en right, ko 0; q6 en 3, ko right.
A_EN, A_KO = [0, 1, 2, 3, 1, 1, 3, 0], [0, 1, 2, 3, 1, 0, 2, 0]
# Its raw argmax (acc) differs only on q0 in English: 1 (the length normalisation flips it to 0).
A_EN_RAW = [1, 1, 2, 3, 1, 1, 3, 0]
# Model B: the same option in both languages everywhere; q6 and q7 both answer 1 (wrong).
B_BOTH = [0, 1, 2, 3, 0, 1, 1, 1]


def record(doc_id, doc, gold, raw, norm, lang):
    """An lm-eval log_samples record whose argmax loglik is ``raw`` and argmax loglik/char is ``norm``.

    raw == norm: every choice 1 character, the chosen one at -1, the others at -3.
    raw != norm: ``norm``'s choice is 10 characters at -5 (-0.5 per char), ``raw``'s 1 character at
    -1, the others 1 character at -20: raw argmax -> raw, per-character argmax -> norm.
    """
    letter = "가나다라" if lang == "ko" else "ABCD"
    lengths = [10 if (raw != norm and j == norm) else 1 for j in range(4)]
    lls = [-1.0 if j == raw else (-5.0 if (raw != norm and j == norm) else (-3.0 if raw == norm else -20.0))
           for j in range(4)]
    choices = [letter[j] * lengths[j] for j in range(4)]
    ctx = f"Question {doc_id} ({lang})\nAnswer:"
    return {"doc_id": doc_id, "doc": doc, "target": gold,
            "arguments": [[ctx, " " + c] for c in choices],
            "resps": [[[str(ll), "False"]] for ll in lls],
            "filtered_resps": [[str(ll), "False"] for ll in lls],
            "acc": float(raw == gold), "acc_norm": float(norm == gold)}


def write_samples(path, docs, gold, raw, norm, lang, order=None):
    order = order or range(len(docs))
    path.write_text("".join(json.dumps(record(i, docs[i], gold[i], raw[i], norm[i], lang), ensure_ascii=False)
                            + "\n" for i in order), encoding="utf-8")
    return str(path)


def task_entry(folder, name, task, raw_en, norm_en, raw_ko, norm_ko, belebele=False):
    n = len(raw_en)
    docs = ([{"link": f"https://x/{i // 2}", "question_number": i % 2 + 1} for i in range(n)] if belebele
            else [{"id": f"q{i}", "question": f"q{i}?"} for i in range(n)])
    gold = GOLD[:n]
    out = {}
    for lang, raw, norm in (("en", raw_en, norm_en), ("ko", raw_ko, norm_ko)):
        order = list(reversed(range(n))) if lang == "ko" else None  # pairing must be by id, not line
        f = write_samples(folder / f"samples_{name}_{task}_{lang}.jsonl", docs, gold, raw, norm, lang, order)
        out[lang] = {"acc": sum(r == g for r, g in zip(raw, gold)) / n,
                     "acc_norm": sum(r == g for r, g in zip(norm, gold)) / n, "n": n, "samples": f}
    return out


def fake_07(run_dir, models, done=True):
    """``models``: list of (name, kind, stage, step, path, tasks); writes evals.json (+ DONE)."""
    d = run_dir / "07_benchmark_eval"
    d.mkdir(parents=True)
    entries = [{"name": n, "kind": k, "stage": s, "step": st, "path": str(p), "tasks": t, "seconds": 1.0}
               for n, k, s, st, p, t in models]
    (d / "evals.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    if done:
        (d / "DONE").write_text("{}")
    return d


@pytest.fixture()
def runs(tmp_path, tiny_assets):
    """A main run (stage model listed before the baseline) and a control run ``ctrl``."""
    model = tiny_assets["model"]
    main, ctrl = tmp_path / "main", tmp_path / "ctrl"
    s = tmp_path / "samples"
    s.mkdir()
    a = {"toy_arc": task_entry(s, "A", "toy_arc", A_EN_RAW, A_EN, A_KO, A_KO),
         "belebele": task_entry(s, "A", "belebele", GOLD[:4], GOLD[:4], GOLD[:4], GOLD[:4], belebele=True)}
    b = {"toy_arc": task_entry(s, "B", "toy_arc", B_BOTH, B_BOTH, B_BOTH, B_BOTH)}
    fake_07(main, [("02_embedding_init", "stage", "02_embedding_init", None, model, b),
                   ("baseline-toy", "baseline", "00_toy_world", None, model, a)])
    fake_07(ctrl, [("05_stage3_pretrain", "stage", "05_stage3_pretrain", None, model, b),
                   ("05_stage3_pretrain-step-000100", "checkpoint", "05_stage3_pretrain", 100, model, a)])
    return main, ctrl


def by_model(rows, run, model, task):
    [row] = [r for r in rows if r["run"] == run and r["model"] == model and r["task"] == task]
    return row


def test_manifest_pipeline_order_labels_and_errors(runs, tmp_path):
    main, ctrl = runs
    m = an.load_manifest(main, compare=[ctrl])
    assert [(e["run"], e["name"]) for e in m] == [
        ("main", "baseline-toy"), ("main", "02_embedding_init"),                       # baselines first
        ("ctrl", "05_stage3_pretrain-step-000100"), ("ctrl", "05_stage3_pretrain")]    # final model last
    bad = tmp_path / "bad"
    fake_07(bad, [("x", "stage", "02_embedding_init", None, "m", {"toy_arc": {
        "en": {"samples": str(tmp_path / "missing.jsonl")}, "ko": {"samples": str(tmp_path / "missing.jsonl")}}})])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        an.load_manifest(bad)
    unfinished = tmp_path / "unfinished"
    fake_07(unfinished, [], done=False)
    with pytest.raises(FileNotFoundError, match="no DONE"):
        an.load_manifest(unfinished)
    assert an.load_manifest(unfinished, require_done=False) == []
    wrong = tmp_path / "wrong"
    fake_07(wrong, [("y", "final", "05_x", None, "m", {})])
    with pytest.raises(ValueError, match="kind 'final'"):
        an.load_manifest(wrong)


def test_paired_rows_by_hand(runs):
    main, _ = runs
    manifest = an.load_manifest(main)
    rows = an.paired_rows(manifest, "acc_norm", n_boot=0)
    assert [(r["model"], r["task"]) for r in rows] == [
        ("baseline-toy", "toy_arc"), ("baseline-toy", "belebele"), ("02_embedding_init", "toy_arc")]
    a = by_model(rows, "main", "baseline-toy", "toy_arc")
    assert (a["n"], a["kind"], a["stage"], a["step"], a["prediction"]) == (8, "baseline", "00_toy_world", None, "acc_norm")
    assert a["acc_en"] == 5 / 8 and a["acc_ko"] == 5 / 8          # q0-q3 + q5 / q0-q3 + q6
    assert a["agreement"] == 6 / 8                                  # all but q5, q6
    # en counts A2 B3 C1 D2, ko A3 B2 C2 D1: p_e = (6+6+2+2)/64 = 1/4; kappa = (3/4-1/4)/(3/4) = 2/3
    assert a["kappa"] == pytest.approx(2 / 3)
    assert {s: a[s] for s in SPLITS} == {"both_correct": 4 / 8, "both_wrong_same": 2 / 8,
                                         "both_wrong_different": 0.0, "only_en_correct": 1 / 8,
                                         "only_ko_correct": 1 / 8}
    assert math.isnan(a["agreement_lo"])                           # n_boot=0: no interval
    raw = a["by_prediction"]["acc"]                                # q0 in English flips to option 1
    assert raw["acc_en"] == 4 / 8 and raw["acc_ko"] == 5 / 8 and raw["agreement"] == 5 / 8
    # en counts A1 B4 C1 D2, ko A3 B2 C2 D1: p_e = (3+8+2+2)/64 = 15/64; kappa = (40-15)/(64-15) = 25/49
    assert raw["kappa"] == pytest.approx(25 / 49)
    assert an.paired_rows(manifest, "acc", n_boot=0)[0]["agreement"] == 5 / 8
    bel = by_model(rows, "main", "baseline-toy", "belebele")       # keyed by (link, question_number)
    assert (bel["n"], bel["acc_en"], bel["acc_ko"], bel["agreement"]) == (4, 1.0, 1.0, 1.0)
    b = by_model(rows, "main", "02_embedding_init", "toy_arc")
    # same option everywhere: agreement 1; en = ko counts A2 B4 C1 D1, p_e = 22/64 < 1, so kappa 1
    assert (b["acc_en"], b["acc_ko"], b["agreement"], b["kappa"]) == (6 / 8, 6 / 8, 1.0, 1.0)
    with pytest.raises(ValueError, match="prediction must be one of"):
        an.paired_rows(manifest, "acc_bytes")


def test_compare_runs_bootstrap_predictions_file_and_reported_check(runs, tmp_path):
    main, ctrl = runs
    manifest = an.load_manifest(main, compare=[str(ctrl)])
    items = an.load_items(manifest)
    rows = an.paired_rows(manifest, "acc_norm", n_boot=300, seed=1, items=items)
    assert [r["run"] for r in rows] == ["main"] * 3 + ["ctrl"] * 3
    c = by_model(rows, "ctrl", "05_stage3_pretrain-step-000100", "toy_arc")
    assert (c["step"], c["kind"], c["agreement"]) == (100, "checkpoint", 6 / 8)
    for m in ("acc_en", "acc_ko", "agreement", "kappa"):
        assert c[f"{m}_lo"] <= c[m] <= c[f"{m}_hi"]
    # same data and seed: the same interval in both runs
    assert by_model(rows, "main", "baseline-toy", "toy_arc")["agreement_lo"] == c["agreement_lo"]

    path = an.write_predictions(items, tmp_path / "out" / "predictions.jsonl")
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2 * (8 + 4 + 8)
    q0 = next(x for x in lines if x["run"] == "main" and x["model"] == "baseline-toy" and x["id"] == "q0")
    assert (q0["gold"], q0["pred_en"], q0["pred_norm_en"], q0["pred_ko"], q0["pred_norm_ko"]) == (0, 1, 0, 0, 0)
    assert any(x["id"] == ["https://x/0", 2] for x in lines)        # Belebele ids are (link, number)

    f = ctrl / "07_benchmark_eval" / "evals.json"
    entries = json.loads(f.read_text())
    entries[0]["tasks"]["toy_arc"]["en"]["acc_norm"] = 0.5        # 07 says 0.5, the samples say 0.75
    f.write_text(json.dumps(entries))
    with pytest.warns(UserWarning, match="07 reports acc_norm=0.500000 but its samples give 0.750000"):
        an.paired_rows(an.load_manifest(ctrl), n_boot=0)


def test_representation_rows_on_tiny_llama(tiny_assets, runs):
    from lib.modeling.model import load_model
    model, tok = load_model(str(tiny_assets["model"]), device="cpu")
    # A sentence against itself: its own vector is the nearest one at every layer.
    per_layer, idx, ko, en = an.model_representation(model, tok, EN_LINES[:10], EN_LINES[:10])
    n_states = model.config.num_hidden_layers + 1
    assert idx == n_states - 1 and ko.shape == (10, model.config.hidden_size)
    assert per_layer["p1"] == [1.0] * n_states
    assert per_layer["pair_cos"] == pytest.approx([1.0] * n_states, abs=1e-6)

    main, ctrl = runs
    manifest = an.load_manifest(main, compare=[ctrl])
    reps = an.representations(manifest, KO_LINES[:12], EN_LINES[:12], layer=1, progress=False)
    rows = an.representation_rows(reps)
    assert [(r["run"], r["model"]) for r in rows] == [(e["run"], e["name"]) for e in manifest]
    for r in rows:
        assert r["layer"] == 1 and r["pairs"] == 12
        for key in ("p1", "p1_ko2en", "p1_en2ko"):
            assert len(r["per_layer"][key]) == n_states
            assert all(0.0 <= v <= 1.0 for v in r["per_layer"][key])
        assert r["retrieval_p1"] == r["per_layer"]["p1"][1]
        assert r["gap"] == pytest.approx(r["pair_cos"] - r["nonpair_cos"])
    # every entry names the same folder: computed once, the same numbers under four labels
    assert len({json.dumps(r["per_layer"]) for r in rows}) == 1
    json.dumps(rows)                                                # JSON-ready, no arrays
    with pytest.raises(ValueError, match="out of range"):
        an.model_representation(model, tok, KO_LINES[:4], EN_LINES[:4], layer=n_states)


def test_summary_table_figures_and_no_umap(runs, tmp_path, tiny_assets, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)                 # any `import umap` would fail here
    main, ctrl = runs
    manifest = an.load_manifest(main, compare=[ctrl])
    paired = an.paired_rows(manifest, "acc_norm", n_boot=200)
    reps = an.representations(manifest, KO_LINES[:8], EN_LINES[:8], progress=False)
    table = an.summary_rows(paired, an.representation_rows(reps))
    assert len(table) == 6 and table[0]["retrieval_p1"] == reps[0].per_layer["p1"][-1]
    assert table[0]["acc:agreement"] == 5 / 8 and table[0]["acc_norm:agreement"] == 6 / 8
    out = an.write_summary(table, tmp_path / "08", note="Prediction: acc_norm.", meta={"prediction": "acc_norm"})
    md = out["md"].read_text(encoding="utf-8").splitlines()
    assert md[0] == ("| run | model | stage | step | cell | n | acc_en | acc_ko | agreement | kappa | "
                     "transfer_ratio | retrieval_p1 |")
    assert md[1].count("|") == 13 and len(md) == 2 + 6 + 2
    assert md[2].startswith("| main | baseline-toy | 00_toy_world |  | toy_arc | 8 | 0.625 [")
    assert "| ctrl | 05_stage3_pretrain-step-000100 | 05_stage3_pretrain | 100 | toy_arc |" in md[5]
    summary = json.loads(out["json"].read_text())
    assert summary["prediction"] == "acc_norm" and summary["rows"][0]["agreement"] == 0.75

    figs = tmp_path / "figures"
    shown = repviz.pick(reps, 3)
    assert [r.model for r in shown] == [reps[0].model, reps[2].model, reps[3].model]  # first and last kept
    for fig in (an.trajectory(table, ("acc_en", "acc_ko"), "accuracy", figs / "accuracy.png"),
                an.trajectory(table, ("agreement", "kappa"), "agreement", figs / "agreement.png", ylim=None),
                an.split_bars(table, figs / "split.png"),
                repviz.p1_by_layer(an.representation_rows(reps), figs / "p1_by_layer.png"),
                repviz.cosine_histograms(shown, figs / "cosines.png")):
        plt.close(fig)
    assert sorted(p.name for p in figs.iterdir()) == ["accuracy.png", "agreement.png", "cosines.png",
                                                      "p1_by_layer.png", "split.png"]
    with pytest.raises(ImportError):
        repviz.umap_coords(shown)


@pytest.mark.slow
def test_umap_grid(tiny_assets, tmp_path):
    from lib.modeling.model import load_model
    model, tok = load_model(str(tiny_assets["model"]), device="cpu")
    per_layer, idx, ko, en = an.model_representation(model, tok, KO_LINES[:15], EN_LINES[:15])
    reps = [an.Representation("r", f"m{i}", "stage", "02_x", None, idx, per_layer, ko, en) for i in range(2)]
    coords, seconds = repviz.umap_coords(reps, random_state=0)
    assert [c.shape for c in coords] == [(30, 2), (30, 2)] and set(seconds) == {"m0", "m1"}
    assert (coords[0] == coords[1]).all()                          # fixed random_state: same map
    plt.close(repviz.umap_grid(reps, coords, tmp_path / "umap.png", pairs_linked=5))
    assert (tmp_path / "umap.png").stat().st_size > 0


@pytest.mark.slow
def test_notebook_headless(runs, tmp_path):
    """Notebook 08 through the Papermill runner on the fake 07 output, UMAP off."""
    from lib.run.pipeline import run_pipeline
    main, ctrl = runs
    (main / "heldout.ko").write_text("\n".join(KO_LINES[:10]) + "\n", encoding="utf-8")
    (main / "heldout.en").write_text("\n".join(EN_LINES[:10]) + "\n", encoding="utf-8")
    f = tmp_path / "p.yaml"
    f.write_text(f"common:\n  base_model: {main}\n08_agreement_analysis:\n  compare_runs: [{ctrl}]\n"
                 "  heldout_ko: '{run}/heldout.ko'\n  heldout_en: '{run}/heldout.en'\n"
                 "  n_boot: 100\n  umap: false\n  device: cpu\n  prediction: acc_norm\n", encoding="utf-8")
    run_pipeline(f, run=str(main), only="08", progress=False)
    d = main / "08_agreement_analysis"
    m = json.loads((d / "metrics.json").read_text())
    assert m["runs"] == ["main", "ctrl"] and m["models"] == 4 and m["rep_pairs"] == 10
    assert m["umap"] is False and m["umap_seconds"] == {}
    assert [r["agreement"] for r in m["rows"]][:3] == [0.75, 1.0, 1.0]
    assert (d / "summary.md").exists() and (d / "predictions.jsonl").exists() and (d / "DONE").exists()
    assert sorted(p.name for p in (d / "figures").iterdir()) == [
        "accuracy.png", "agreement.png", "agreement_intervals.png", "calibration.png", "cosines.png", "null_controls.png", "p1_by_layer.png", "split.png",
        "transfer_scale.png"]
    assert (d / "transfer.md").read_text(encoding="utf-8").startswith("| model | knowledge acc_en |")


def real_records(docs, lang, rng_ll, kind):
    """lm-eval-style records over real benchmark docs with given log-likelihoods; returns
    (records, {id: (gold, pred, pred_norm)}) with predictions worked out here with numpy."""
    import numpy as np
    recs, expect = [], {}
    for i, (doc, lls) in enumerate(zip(docs, rng_ll)):
        if kind == "arc":
            choices, gold = doc["choices"]["text"], doc["choices"]["label"].index(doc["answerKey"])
            key = doc["id"]
        else:
            choices = [doc[f"mc_answer{j}"] for j in range(1, 5)]
            gold, key = int(doc["correct_answer_num"]) - 1, (doc["link"], int(doc["question_number"]))
        lls = lls[:len(choices)]
        pred, norm = int(np.argmax(lls)), int(np.argmax(lls / np.array([len(c) for c in choices])))
        recs.append({"doc_id": i, "doc": doc, "target": gold, "arguments": [[f"Q{lang}", " " + c] for c in choices],
                     "filtered_resps": [[str(x), "False"] for x in lls], "acc": float(pred == gold),
                     "acc_norm": float(norm == gold)})
        expect[key] = (gold, pred, norm)
    return recs, expect


@pytest.mark.shared_data
def test_real_arc_and_belebele_pairing(shared_data, tmp_path):
    """Real ARC-Challenge (1,172, by id) and Belebele (900, by link + question_number) docs with
    synthetic log-likelihoods; the Korean file shuffled. Agreement is recounted here with numpy."""
    import numpy as np
    rng = np.random.default_rng(0)
    tasks, expected = {}, {}
    for task, kind, files in (("arc", "arc", ("arc_challenge/en_test.jsonl", "arc_challenge/ko_test.jsonl")),
                              ("belebele", "belebele", ("belebele/eng_Latn.jsonl", "belebele/kor_Hang.jsonl"))):
        docs = {lang: [json.loads(x) for x in (shared_data / "bench" / f).read_text(encoding="utf-8").splitlines()]
                for lang, f in zip(("en", "ko"), files)}
        ll_en = rng.normal(-20, 5, size=(len(docs["en"]), 5))
        ll_ko = ll_en + rng.normal(0, 4, size=ll_en.shape)             # correlated: partial agreement
        perm = rng.permutation(len(docs["ko"]))
        out, exp = {}, {}
        for lang, d, ll in (("en", docs["en"], ll_en), ("ko", [docs["ko"][i] for i in perm], ll_ko[perm])):
            recs, exp[lang] = real_records(d, lang, ll, kind)
            f = tmp_path / f"{task}_{lang}.jsonl"
            f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
            out[lang] = {"samples": str(f)}
        tasks[task], expected[task] = out, exp
    fake_07(tmp_path / "real", [("base", "baseline", "hub/x", None, "hub/x", tasks)])
    rows = an.paired_rows(an.load_manifest(tmp_path / "real"), "acc_norm", n_boot=1000, seed=0)
    for row in rows:
        en, ko = expected[row["task"]]["en"], expected[row["task"]]["ko"]
        assert row["n"] == len(en) == {"arc": 1172, "belebele": 900}[row["task"]]
        for pred, col in (("acc_norm", 2), ("acc", 1)):
            m = row["by_prediction"][pred]
            assert m["agreement"] == pytest.approx(np.mean([en[k][col] == ko[k][col] for k in en]))
            assert m["acc_ko"] == pytest.approx(np.mean([ko[k][col] == ko[k][0] for k in ko]))
        assert 0.3 < row["agreement"] < 0.95 and row["agreement_lo"] < row["agreement"] < row["agreement_hi"]
