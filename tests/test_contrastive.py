"""Stage 1 (lib.train.contrastive): alignment improves, the head stays frozen, every option runs.

The learnable set: Korean/English sentences built from one small bilingual lexicon (subject,
object, verb, place). Held-out pairs are word combinations never trained on, made only of words
that were, so retrieval above chance needs a learned Ko<->En lexicon, not memorised sentences.
Korean and English share no token, so an untrained model retrieves near chance.
"""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lib.core.params import notebook_params
from lib.core.readers import DataError
from lib.core.stage import resolve
from lib.modeling.represent import embed_texts
from lib.train import contrastive as C

SUBJ = [("고양이가", "cat"), ("개가", "dog"), ("농부가", "farmer"), ("선생님이", "teacher"), ("아이가", "child")]
OBJ = [("사과를", "apple"), ("강을", "river"), ("집을", "house"), ("책을", "book")]
VERB = [("본다", "sees"), ("좋아한다", "likes"), ("찾는다", "finds")]
PLACE = [("학교", "school"), ("시장", "market")]


def lexicon_pairs() -> list[tuple[str, str]]:
    return [(f"{s} {o} {p}에서 {v}.", f"The {se} {ve} the {oe} at the {pe}.")
            for (s, se), (o, oe), (v, ve), (p, pe) in itertools.product(SUBJ, OBJ, VERB, PLACE)]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "one_thread")   # conftest: accelerate reset, one torch thread


def write_pair_files(root) -> dict:
    """96 training and 24 held-out pairs (120 combinations, shuffled with a fixed seed) as
    ``train.ko``/``train.en``/``heldout.ko``/``heldout.en`` in ``root``."""
    pairs = lexicon_pairs()
    random.Random(0).shuffle(pairs)
    files = {}
    for split, rows in (("train", pairs[:96]), ("heldout", pairs[96:])):
        for i, lang in enumerate(("ko", "en")):
            files[f"{split}_{lang}"] = root / f"{split}.{lang}"
            files[f"{split}_{lang}"].write_text("".join(r[i] + "\n" for r in rows), encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    return write_pair_files(tmp_path_factory.mktemp("pairs"))


def config(tmp_path, assets, files, **over):
    ns = {k: p.default for k, p in notebook_params(C.STAGE).items()}
    ns.update(run=str(tmp_path / "run"), init_from=str(assets["model"]), report_to="none",
              pairs_ko=str(files["train_ko"]), pairs_en=str(files["train_en"]),
              heldout_ko=str(files["heldout_ko"]), heldout_en=str(files["heldout_en"]), clm_text=str(assets["sample_ko"]),
              batch_size=16, max_len=32, steps=8, lr=3e-3, warmup_steps=2, eval_every=4, save_every=4, clm_block=32)
    ns.update(over)
    return resolve(C.STAGE, ns)


def weights_of(folder):
    return load_file(str(folder / "model.safetensors"))


def test_retrieval_improves_head_frozen_every_layer_trained(tmp_path, tiny_assets, pair_files):
    cfg = config(tmp_path, tiny_assets, pair_files, steps=60, eval_every=30, save_every=30)
    m = C.run(cfg)
    losses = [r["loss"] for r in m["curves"]["loss"]]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    p1 = m["retrieval_p1"]
    print(f"\nheld-out P@1 {p1['before']:.3f} -> {p1['after']:.3f}; gap {m['gap']['before']:.3f} -> "
          f"{m['gap']['after']:.3f}; {m['pairs_per_second']:.0f} pairs/s")
    assert p1["before"] <= 0.25 and p1["after"] >= p1["before"] + 0.4
    assert m["gap"]["after"] > m["gap"]["before"]
    assert [e["step"] for e in m["curves"]["eval"]] == [0, 30, 60]
    assert [c.rsplit("/", 1)[-1] for c in m["checkpoints"]] == ["step-000030", "step-000060"]
    assert m["init_from"] == str(tiny_assets["model"]) and m["head_was_tied"] is False
    start, end = weights_of(tiny_assets["model"]), weights_of(cfg.stage_dir / "model")
    assert torch.equal(start["lm_head.weight"], end["lm_head.weight"])
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed == set(start) - {"lm_head.weight"}      # embeddings, every layer, final norm
    assert m["params_trainable"] == m["params_total"] - start["lm_head.weight"].numel()
    assert (cfg.stage_dir / "model" / "tokenizer.model").exists()


def test_layer_range_learns_weights_that_sum_to_one(tmp_path, tiny_assets, pair_files):
    cfg = config(tmp_path, tiny_assets, pair_files, layer_range=[1, 2], layer_weights_lr=0.05)
    m = C.run(cfg)
    lw = m["layer_weights"]
    assert lw["layers"] == [1, 2] and sorted(lw["checkpoints"]) == ["step-000004", "step-000008"]
    for w in [lw["final"], *lw["checkpoints"].values()]:
        assert abs(sum(w) - 1) < 1e-6
    assert lw["final"] == lw["checkpoints"]["step-000008"] and abs(lw["final"][0] - 0.5) > 1e-3
    assert json.loads((cfg.stage_dir / "layer_weights.json").read_text()) == lw
    assert json.loads((cfg.stage_dir / "model" / "layer_weights.json").read_text())["weights"] == lw["final"]
    assert m["curves"]["eval"][-1]["layer_weights"] == lw["final"]
    assert m["layers_frozen_above_representation"] == []


def test_frozen_english_encoder_stays_put(tmp_path, tiny_assets, pair_files):
    cfg = config(tmp_path, tiny_assets, pair_files, english_encoder="frozen", layer=1, steps=6)
    s = C.build(cfg)
    start = weights_of(tiny_assets["model"])
    en_texts = s.heldout[1]
    en_before = embed_texts(s.english, s.tok, en_texts, layer=1)
    from lib.train.loop import train
    train([s.encoder], C.batch_fn(s), C.loss_fn(s), C.train_spec(cfg), cfg.stage_dir,
          eval_fn=lambda: C.evaluate(s), save_fn=C.save_fn(s))
    for k, v in s.english.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert not torch.equal(s.model.model.embed_tokens.weight, start["model.embed_tokens.weight"])
    assert torch.equal(embed_texts(s.english, s.tok, en_texts, layer=1), en_before)
    # layer 1 of 2: the second block and the final norm get no InfoNCE gradient, so they are frozen
    assert s.info["layers_frozen_above_representation"] == [1]
    assert torch.equal(s.model.model.layers[1].mlp.up_proj.weight, start["model.layers.1.mlp.up_proj.weight"])


def test_clm_joint_loss_logs_both_losses(tmp_path, tiny_assets, pair_files):
    cfg = config(tmp_path, tiny_assets, pair_files, clm_weight=0.5, layer=1, steps=4)
    m = C.run(cfg)
    for r in m["curves"]["loss"]:
        assert r["info_nce"] > 0 and r["clm"] > 0
        assert r["loss"] == pytest.approx(r["info_nce"] + 0.5 * r["clm"], rel=1e-5)
    assert m["layers_frozen_above_representation"] == []      # CLM reaches every layer
    assert m["clm_stream"]["sources"]["ko"]["rows"] == 4 * 16
    start, end = weights_of(tiny_assets["model"]), weights_of(cfg.stage_dir / "model")
    assert torch.equal(start["lm_head.weight"], end["lm_head.weight"])
    assert not torch.equal(start["model.layers.1.mlp.up_proj.weight"], end["model.layers.1.mlp.up_proj.weight"])


def test_tied_head_is_untied_and_kept(tmp_path, tiny_assets, pair_files):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    tied_dir = tmp_path / "tied"
    conf = AutoConfig.from_pretrained(tiny_assets["model"], tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tied_dir)
    AutoTokenizer.from_pretrained(tiny_assets["model"]).save_pretrained(tied_dir)
    emb = model.model.embed_tokens.weight.detach().clone()
    cfg = config(tmp_path, tiny_assets, pair_files, init_from=str(tied_dir), steps=3)
    m = C.run(cfg)
    assert m["head_was_tied"] is True and "untied" in m["head"]
    out = AutoModelForCausalLM.from_pretrained(cfg.stage_dir / "model")
    assert out.config.tie_word_embeddings is False
    assert torch.equal(out.lm_head.weight, emb) and not torch.equal(out.model.embed_tokens.weight, emb)


def test_last_token_pooling_runs_and_parameters_lead_with_run_seed_model_device(tmp_path, tiny_assets, pair_files):
    assert list(notebook_params(C.STAGE))[:4] == ["run", "seed", "base_model", "device"]
    m = C.run(config(tmp_path, tiny_assets, pair_files, pooling="last", steps=2, eval_every=0))
    assert m["pooling"] == "last" and [e["step"] for e in m["curves"]["eval"]] == [0, 2]


def test_batches_are_a_pure_function_of_the_step():
    b = C.PairBatches(50, 8, grad_accum=2, seed=3)
    per_epoch = [b.indices(s, m) for s in range(3) for m in range(2)]     # 6 batches = one epoch
    flat = torch.tensor([int(i) for x in per_epoch for i in x])
    assert len(set(flat.tolist())) == 48                                  # no pair twice in an epoch
    assert all(len(set(x.tolist())) == 8 for x in per_epoch)
    again = C.PairBatches(50, 8, grad_accum=2, seed=3)
    assert all((again.indices(s, m) == b.indices(s, m)).all() for s in (7, 0, 30) for m in (0, 1))
    ranks = [b.indices(5, 1, r, 2) for r in range(2)]
    assert sorted(int(i) for x in ranks for i in x) == sorted(b.indices(5, 1).tolist())
    assert not (b.indices(3, 0) == b.indices(0, 0)).all()                 # a new epoch reshuffles
    with pytest.raises(ValueError, match="larger than the 50 training pairs"):
        C.PairBatches(50, 64)


def test_length_grouping_keeps_every_pair_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=203)
    plain = C.PairBatches(203, 16, seed=1)
    grouped = C.PairBatches(203, 16, seed=1, group_by_length=4, lengths=lengths)
    assert (C.PairBatches(203, 16, seed=1, group_by_length=0, lengths=lengths).permutation(0)
            == plain.permutation(0)).all()                                  # 0: exactly as before
    for epoch in (0, 1):
        # the same pairs are used and dropped in each epoch, each once
        assert sorted(grouped.permutation(epoch)[:192]) == sorted(plain.permutation(epoch)[:192])
    batches = [grouped.indices(s) for s in range(12)]                        # one epoch
    assert sorted(int(i) for b in batches for i in b) == sorted(plain.permutation(0)[:192].tolist())

    def padded(b):
        return sum(int(lengths[x].max()) * len(x) for x in b)
    assert padded(batches) < 0.8 * padded([plain.indices(s) for s in range(12)])
    again = C.PairBatches(203, 16, seed=1, group_by_length=4, lengths=lengths)
    assert all((again.indices(s) == grouped.indices(s)).all() for s in (0, 5, 13))
    # length order is within a pool of 4 batches; the batches themselves are shuffled
    firsts = [int(lengths[b].min()) for b in batches]
    assert firsts != sorted(firsts)
    with pytest.raises(ValueError, match="one length per pair"):
        C.PairBatches(203, 16, group_by_length=4)


def test_bad_inputs_fail_clearly(tmp_path, tiny_assets, pair_files):
    short = tmp_path / "short.en"
    short.write_text("one line\n", encoding="utf-8")
    with pytest.raises(DataError, match="misaligned"):
        C.build(config(tmp_path, tiny_assets, pair_files, pairs_en=str(short)))
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        C.build(config(tmp_path, tiny_assets, pair_files, layer=9))
    with pytest.raises(ValueError, match="layer_range"):
        C.build(config(tmp_path, tiny_assets, pair_files, layer_range=[2, 1]))
    with pytest.raises(ValueError, match="english_encoder"):
        C.build(config(tmp_path, tiny_assets, pair_files, english_encoder="copy"))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_assets, pair_files):
    from lib.train.loop import Interrupted
    over = dict(steps=8, save_every=4, layer_range=[0, 2], clm_weight=0.3)
    ref = C.run(config(tmp_path / "a", tiny_assets, pair_files, **over))
    cfg = config(tmp_path / "b", tiny_assets, pair_files, **over)
    with pytest.raises(Interrupted):
        C.run(cfg, stop_at=5)
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    m = C.run(cfg)
    assert m["resumed_from"].endswith("step-000004")
    a, b = weights_of(tmp_path / "a" / "run" / C.STAGE / "model"), weights_of(cfg.stage_dir / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert m["layer_weights"]["final"] == ref["layer_weights"]["final"]
    assert m["retrieval_p1"] == ref["retrieval_p1"]
