"""Model hyper-parameters, named exactly as Hugging Face's `LlamaConfig` names them.

Keeping the field names identical means `config.json` is both our config and a valid
`transformers` Llama config: no translation table to drift out of date.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ModelConfig:
    """A Llama-architecture decoder: RMSNorm, RoPE, SwiGLU MLP, no biases, optional GQA."""

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be divisible by num_key_value_heads")
        if self.head_dim % 2:
            problems.append("head_dim must be even for rotary embeddings")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "max_position_embeddings"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        """Parameter count without instantiating the model (tied embeddings counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_hidden_layers * per_layer + h + head

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` content: loadable by `transformers.LlamaConfig`."""
        d = asdict(self)
        d.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            hidden_act="silu",
            attention_bias=False,
            attention_dropout=0.0,
            mlp_bias=False,
            head_dim=self.head_dim,
            pretraining_tp=1,
            rope_scaling=None,
            use_cache=True,
            torch_dtype=torch_dtype,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a Llama `config.json`; raises ValueError naming what is unsupported."""
        archs = d.get("architectures") or ["LlamaForCausalLM"]
        if d.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in archs:
            raise ValueError(
                f"unsupported architecture {archs} / model_type {d.get('model_type')!r}; "
                "only LlamaForCausalLM is supported"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d['hidden_act']!r}; only 'silu'")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("biases in attention or MLP are not supported")
        if d.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported")
        rope = d.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" not in d and "rope_theta" in rope:
            d = {**d, "rope_theta": rope["rope_theta"]}
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("vocab_size", "hidden_size", "intermediate_size",
                               "num_hidden_layers", "num_attention_heads") if n not in d]
        if missing:
            raise ValueError(f"missing required fields {missing}")
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.setdefault("num_key_value_heads", d["num_attention_heads"])
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        cfg = cls(**kwargs)
        if d.get("head_dim") not in (None, cfg.head_dim):
            raise ValueError(f"head_dim {d['head_dim']} != hidden_size / num_attention_heads")
        return cfg
