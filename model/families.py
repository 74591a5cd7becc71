"""Reading a checkpoint's tensors under our module names, for every supported family.

Checkpoints are read lazily: `model.safetensors`, or the shards that
`model.safetensors.index.json` lists, are opened memory-mapped and one tensor at a time
is copied into the model (no whole-file read, no second copy of the model), in the dtype
it was stored in until the model's own dtype takes it.

Names: Llama, Qwen2, Mistral and Starcoder2 put our module names under `model.`;
GPTBigCode has its own names and one fused q/k/v projection, split here into three.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from model.config import ModelConfig
from model.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointFilesError(ValueError):
    """A weights file or shard index that is missing or unreadable."""


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: the single file, or every shard of the
    index (in the index's order, each once)."""
    single, index = path / WEIGHTS_FILE, path / INDEX_FILE
    if single.is_file():
        return [single]
    if not index.is_file():
        raise CheckpointFilesError(f"{single} is missing: a model directory needs its weights "
                                   f"(one file, or shards listed in {INDEX_FILE}).")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointFilesError(f"{index} is not a valid shard index ({e}).") from None
    files = [path / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointFilesError(f"{index} lists shards that are missing: {missing[:3]}.")
    return files


# (our name, tensor, the file it came from, its name there)
Item = tuple[str, torch.Tensor, Path, str]


def read_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """(name, tensor, file) for every tensor, one at a time, memory-mapped."""
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                    yield name, st.get_tensor(name), f
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointFilesError(f"{f} is corrupt or not a safetensors file "
                                       f"({first}).") from None


BIGCODE_NAMES = [
    (r"^transformer\.wte\.", "embed_tokens."),
    (r"^transformer\.wpe\.", "embed_positions."),
    (r"^transformer\.ln_f\.", "norm."),
    (r"^transformer\.h\.(\d+)\.ln_1\.", r"layers.\1.input_layernorm."),
    (r"^transformer\.h\.(\d+)\.ln_2\.", r"layers.\1.post_attention_layernorm."),
    (r"^transformer\.h\.(\d+)\.attn\.c_proj\.", r"layers.\1.self_attn.o_proj."),
    (r"^transformer\.h\.(\d+)\.mlp\.", r"layers.\1.mlp."),
]
FUSED_QKV = re.compile(r"^transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$")
IGNORED = re.compile(r"(rotary_emb\.inv_freq|(^|\.)attn\.(masked_bias|bias))$")


def our_tensors(config: ModelConfig, items: Iterator[tuple[str, torch.Tensor, Path]]
                ) -> Iterator[Item]:
    """The checkpoint's tensors renamed to our state-dict keys (fused ones split)."""
    for name, t, f in items:
        if IGNORED.search(name):
            continue
        if config.model_type != "gpt_bigcode":
            yield Transformer.from_hf_key(name), t, f, name
            continue
        fused = FUSED_QKV.match(name)
        if fused:
            layer, kind = fused.groups()
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), split_qkv(config, t),
                                   strict=True):
                yield f"layers.{layer}.self_attn.{part}.{kind}", piece, f, name
            continue
        ours = name
        for pattern, repl in BIGCODE_NAMES:
            if re.match(pattern, name):
                ours = re.sub(pattern, repl, name)
                break
        yield ours, t, f, name


def split_qkv(config: ModelConfig, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GPTBigCode's c_attn rows: with multi-query attention [q (all heads), k, v]; without,
    per head [q, k, v] interleaved (as its forward pass views them)."""
    hd, heads = config.head_dim, config.num_attention_heads
    if config.num_key_value_heads == 1:
        return tuple(t.split((heads * hd, hd, hd), dim=0))
    per_head = t.reshape(heads, 3, hd, *t.shape[1:])
    return tuple(per_head[:, i].reshape(heads * hd, *t.shape[1:]) for i in range(3))
