"""Model hyper-parameters, named exactly as Hugging Face's `LlamaConfig` names them.

Keeping the field names identical means the `config.json` we write is both our config and
a valid `transformers` Llama config: no translation table to drift out of date. Configs
of the other supported families (FAMILIES) are read into the same dataclass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from model.rope import check_scaling, rope_type

# Architectures (HF `architectures[0]`) whose checkpoints load, and their `model_type`.
FAMILIES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
    "Starcoder2ForCausalLM": "starcoder2",
    "GPTBigCodeForCausalLM": "gpt_bigcode",
}
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new")


@dataclass
class ModelConfig:
    """A decoder: RoPE, RMSNorm, SwiGLU, optional GQA (our Llama), with the switches by
    which the other supported families differ (biases, LayerNorm, a plain GELU MLP,
    learned positions, rope scaling). One forward pass serves them all (transformer.py)."""

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-5         # the epsilon of whichever norm the family uses
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    head_dim: int = 0                  # 0: hidden_size // num_attention_heads
    rope_scaling: dict[str, Any] | None = None   # see model/rope.py
    # How the families differ (the defaults are our own Llama):
    model_type: str = "llama"
    hidden_act: str = "silu"
    attention_bias: bool = False       # biases on q, k and v
    attention_out_bias: bool = False   # bias on the attention's output projection
    mlp_bias: bool = False
    gated_mlp: bool = True             # act(gate(x)) * up(x) -> down; else c_fc -> act -> c_proj
    layer_norm: bool = False           # LayerNorm with a bias instead of RMSNorm
    learned_positions: bool = False    # a position embedding table instead of RoPE

    def __post_init__(self) -> None:
        problems = []
        if not self.head_dim:
            if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
                problems.append("hidden_size must be divisible by num_attention_heads")
            self.head_dim = self.hidden_size // max(1, self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be divisible by num_key_value_heads")
        if self.head_dim % 2 and not self.learned_positions:
            problems.append("head_dim must be even for rotary embeddings")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "max_position_embeddings", "head_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.gated_mlp and self.hidden_act != "silu":
            problems.append("a gated MLP uses silu")
        try:
            check_scaling(self.rope_scaling)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems) + ".")

    def num_parameters(self) -> int:
        """Parameter count without instantiating the model (tied embeddings counted once)."""
        h, i, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = 2 * h * q + 2 * h * kv
        attn += (q + 2 * kv) * self.attention_bias + h * self.attention_out_bias
        mlp = (3 if self.gated_mlp else 2) * h * i
        mlp += ((2 * i if self.gated_mlp else i) + h) * self.mlp_bias
        norm = 2 * h if self.layer_norm else h
        head = 0 if self.tie_word_embeddings else v * h
        positions = self.max_position_embeddings * h if self.learned_positions else 0
        return v * h + self.num_hidden_layers * (attn + mlp + 2 * norm) + norm + head \
            + positions

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` content of a model we train: loadable by
        `transformers.LlamaConfig`. Only Llama-family configs are written."""
        if self.model_type != "llama" or not self.gated_mlp or self.layer_norm \
                or self.learned_positions or self.attention_bias != self.attention_out_bias:
            raise ValueError("only Llama configs are written as config.json")
        d = asdict(self)
        for name in ("model_type", "gated_mlp", "layer_norm", "learned_positions",
                     "attention_out_bias"):
            d.pop(name)
        d.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_dropout=0.0,
            pretraining_tp=1,
            use_cache=True,
            torch_dtype=torch_dtype,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` of a supported family; raises ValueError with
        one sentence naming what is unsupported or missing."""
        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in FAMILIES), None)
        if arch is None:
            by_type = {v: k for k, v in FAMILIES.items()}
            arch = by_type.get(d.get("model_type", "llama" if not archs else ""))
        if arch is None:
            raise ValueError(
                f"unsupported architecture {archs or d.get('model_type')!r}; supported: "
                f"{', '.join(FAMILIES)}")
        family = FAMILIES[arch]
        read = _gpt_bigcode if family == "gpt_bigcode" else _rope_family
        kwargs = read(d, family)
        names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise ValueError(f"internal: unknown config fields {sorted(unknown)}")
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        return cls(**kwargs)


def _require(d: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if d.get(k) is None]
    if missing:
        raise ValueError(f"missing required fields {missing}")


def _rope_family(d: dict[str, Any], family: str) -> dict[str, Any]:
    """Llama, Qwen2, Mistral and Starcoder2: RoPE decoders with separate q/k/v."""
    _require(d, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"rope_scaling must be an object, not {rope!r}")
    theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    if rope_type(scaling) == "default":
        scaling = None
    out: dict[str, Any] = {k: d[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "max_position_embeddings", "tie_word_embeddings",
        "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id") if k in d}
    out.update(model_type=family, rope_theta=float(theta), rope_scaling=scaling,
               num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
               head_dim=d.get("head_dim") or 0, hidden_act=d.get("hidden_act", "silu"))
    # transformers' own defaults when the config omits it: Starcoder2 ties, the others not
    out.setdefault("tie_word_embeddings", family == "starcoder2")
    if family == "starcoder2":
        bias = bool(d.get("use_bias", True))
        out.update(rms_norm_eps=d.get("norm_epsilon", 1e-5), layer_norm=True,
                   gated_mlp=False, attention_bias=bias, attention_out_bias=bias,
                   mlp_bias=bias)
    else:
        out["rms_norm_eps"] = d.get("rms_norm_eps", 1e-6 if family != "llama" else 1e-5)
        if family == "qwen2":
            out.update(attention_bias=True)         # q, k, v only
        else:
            bias = bool(d.get("attention_bias"))    # Llama: q, k, v and o
            out.update(attention_bias=bias, attention_out_bias=bias,
                       mlp_bias=bool(d.get("mlp_bias")))
    window = d.get("sliding_window")
    if family == "qwen2" and not d.get("use_sliding_window"):
        window = None
    if window and window < out.get("max_position_embeddings", 2048):
        # Attention within the window is full attention: never run past it.
        out["max_position_embeddings"] = int(window)
    return out


def _gpt_bigcode(d: dict[str, Any], family: str) -> dict[str, Any]:
    """GPTBigCode (SantaCoder, tiny_starcoder): learned positions, LayerNorm, a fused
    q/k/v projection (split on load), multi-query attention, a GELU MLP, biases."""
    _require(d, "vocab_size", "n_embd", "n_layer", "n_head")
    heads, width = d["n_head"], d["n_embd"]
    return dict(
        model_type=family, vocab_size=d["vocab_size"], hidden_size=width,
        intermediate_size=d.get("n_inner") or 4 * width, num_hidden_layers=d["n_layer"],
        num_attention_heads=heads,
        num_key_value_heads=1 if d.get("multi_query", True) else heads,
        max_position_embeddings=d.get("n_positions", 2048),
        rms_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=d.get("tie_word_embeddings", True),
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
        hidden_act=d.get("activation_function", "gelu_pytorch_tanh"),
        attention_bias=True, attention_out_bias=True, mlp_bias=True, gated_mlp=False,
        layer_norm=True, learned_positions=True)
