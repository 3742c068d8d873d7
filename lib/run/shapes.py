"""The shape of a base model, known before anything runs or downloads, for :mod:`lib.run.plan`.

    base_shape("toy", prof, "toy")     # (Shape of 00's tiny Llama, Korean pieces 01 may add, how it is known)
    model_shape("princeton-nlp/Sheared-LLaMA-1.3B")   # a folder's config.json, a reference model, the local cache

The toy base model is the one 00 builds: before 00 has run, its shape comes from 00's parameters
through the same config 00 uses (:func:`lib.world.basemodel.llama_config`), so ``plan`` works on
the shipped ``toy`` and ``micro`` profiles of a fresh clone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lib.core import paths
from lib.core.params import ParamsError, Profile, stage_params
from lib.world.basemodel import BaseModelSpec, llama_config

# shapes of the reference models, so a plan needs no download (config.json of each Hub repo)
KNOWN_SHAPES = {
    "princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT": dict(arch="llama", hidden=2048, layers=24, intermediate=5504,
                                                      heads=16, kv_heads=16, vocab=32000, tied=False),
    "princeton-nlp/Sheared-LLaMA-1.3B": dict(arch="llama", hidden=2048, layers=24, intermediate=5504,
                                             heads=16, kv_heads=16, vocab=32000, tied=False),
    "EleutherAI/polyglot-ko-1.3b": dict(arch="gpt_neox", hidden=2048, layers=24, intermediate=8192,
                                        heads=16, kv_heads=16, vocab=30080, tied=False),
}

class ShapeUnknown(ParamsError):
    """The base model's shape cannot be known without running or downloading anything."""


@dataclass
class Shape:
    arch: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def layer_params(self) -> int:
        return self.layer_linear + (4 * self.hidden + 5 * self.hidden + self.intermediate
                                    if self.arch == "gpt_neox" else 2 * self.hidden)

    @property
    def layer_linear(self) -> int:
        """Matmul weights of one layer. Llama: q, k, v, o and a SwiGLU MLP (3 matrices);
        GPT-NeoX: fused qkv, o and a 2-matrix MLP (biases and LayerNorms counted in layer_params)."""
        h, i, kv = self.hidden, self.intermediate, self.hidden * self.kv_heads // self.heads
        if self.arch == "gpt_neox":
            return 4 * h * h + 2 * h * i
        return 2 * h * h + 2 * h * kv + 3 * h * i

    @property
    def linear_params(self) -> int:
        """Weights of the matmuls (what autocast copies to bf16; what QLoRA quantises)."""
        return self.layers * self.layer_linear

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        final_norm = 2 * self.hidden if self.arch == "gpt_neox" else self.hidden
        return self.layers * self.layer_params + self.embed_params * (1 if self.tied else 2) + final_norm

    def with_vocab(self, vocab: int) -> "Shape":
        return Shape(**{**asdict(self), "vocab": vocab})


def shape_from_config(cfg: dict) -> Shape:
    """A :class:`Shape` from a transformers ``config.json`` (Llama and GPT-NeoX field names)."""
    heads = cfg["num_attention_heads"]
    return Shape(arch=cfg.get("model_type", "llama"), hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                 intermediate=cfg["intermediate_size"], heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                 vocab=cfg["vocab_size"], tied=bool(cfg.get("tie_word_embeddings", False)))


def model_shape(spec: str) -> Shape:
    """The shape of a model folder (its config.json), a known Hub id, or a Hub id in the local cache."""
    p = Path(spec)
    if (p / "config.json").is_file():
        return shape_from_config(json.loads((p / "config.json").read_text(encoding="utf-8")))
    if spec in KNOWN_SHAPES:
        return Shape(**KNOWN_SHAPES[spec])
    try:
        from transformers import AutoConfig  # lib.run keeps transformers off its own top imports
        return shape_from_config(AutoConfig.from_pretrained(spec, local_files_only=True).to_dict())
    except (OSError, ValueError, KeyError) as e:
        raise ShapeUnknown(f"plan: cannot tell the shape of {spec!r}: not a folder with config.json, not one "
                          f"of {sorted(KNOWN_SHAPES)}, not in the local Hugging Face cache ({e})") from None


def toy_shape(prof: Profile, run: str) -> Shape:
    """The toy base model as 00 will build it from this profile's 00 parameters (its vocabulary
    is the base tokenizer's ``base_vocab_size`` pieces)."""
    p = stage_params(prof, paths.TOY_STAGE, run)
    try:
        spec = BaseModelSpec(**{f.name: p[f.name] for f in fields(BaseModelSpec) if f.name in p})
        return shape_from_config(llama_config(spec, spec.base_vocab_size).to_dict())
    except (TypeError, ValueError, KeyError) as e:
        raise ShapeUnknown(f"plan: the toy base model's shape cannot be read from {paths.TOY_STAGE}'s parameters "
                           f"({type(e).__name__}: {e}): run {paths.TOY_STAGE} first "
                           f"(python -m lib.pipeline run {prof.path} --only 00)") from None


def base_shape(spec: str, prof: Profile, run: str) -> tuple[Shape, int | None, str]:
    """The base model's shape; for the toy model also the most pieces 01 can add (the size of
    00's Korean tokenizer; None: another model, merged with KoBERT's); and how the shape is known."""
    rd = paths.run_dir(run)
    if spec != "toy":
        if "{" in spec or spec.startswith((".", "/")) or paths.resolve_path(spec, rd).exists():
            spec = str(paths.resolve_path(spec, rd))
        return model_shape(spec), None, spec
    toy = rd / paths.TOY_STAGE
    built = toy / "metrics.json"
    if (toy / "model" / "config.json").is_file() and built.is_file():
        korean = json.loads(built.read_text(encoding="utf-8"))["korean_vocab_size"]
        return model_shape(str(toy / "model")), korean, f"{toy / 'model'}"
    korean = stage_params(prof, paths.TOY_STAGE, run)["korean_vocab_size"]
    return toy_shape(prof, run), korean, f"{paths.TOY_STAGE}'s parameters, not yet run in {rd}"
