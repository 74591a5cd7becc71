"""Reading and writing the model directory: a Hugging Face Llama checkpoint plus our metadata.

    config.json        LlamaForCausalLM config (see ModelConfig)
    model.safetensors  weights under HF names (tied lm_head omitted, as HF does)
    tokenizer.json     the byte-level BPE
    codecomplete.json  FIM token names, prompt order, context size, provenance

Every way a directory can be wrong raises ModelDirError with one sentence naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.atomic import atomic_write_bytes, atomic_write_text
from model.config import ModelConfig
from model.device import dtype_name, select_device, select_dtype
from model.tokenizer import PSM, SPM, FimTokens, Tokenizer
from model.transformer import Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "codecomplete.json"
META_VERSION = 1


class ModelDirError(ValueError):
    """A model directory (or one file in it) is missing, corrupt or inconsistent."""


@dataclass
class ModelMeta:
    """Contents of codecomplete.json."""

    fim: FimTokens = field(default_factory=FimTokens)
    fim_order: str = PSM
    context_size: int = 1024
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": META_VERSION, "fim": asdict(self.fim),
                "fim_order": self.fim_order, "context_size": self.context_size,
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        fim = FimTokens(**d.get("fim", {}))
        order = d.get("fim_order", PSM)
        if order not in (PSM, SPM):
            raise ValueError(f"fim_order must be 'psm' or 'spm', not {order!r}")
        return cls(fim=fim, fim_order=order, context_size=int(d.get("context_size", 1024)),
                   provenance=dict(d.get("provenance", {})))


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    meta: ModelMeta
    path: Path
    device: torch.device
    dtype: torch.dtype


MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)


def save_model_dir(path: str | Path, model: Transformer, tokenizer: Tokenizer,
                   meta: ModelMeta | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a model directory at `path`, which must be new, empty or one of our model
    directories (it has codecomplete.json): anything else is refused with ModelDirError,
    so `--out ~/projects` never deletes a user's folder. The new directory is written
    beside the old one and swapped in, so a failed or killed export loses nothing; files
    of the old directory that are not model files (a user's notes) move into the new one."""
    path = Path(path).expanduser()
    if path.exists() and not replaceable_model_dir(path):
        raise ModelDirError(
            f"{path} is not empty and not a codecomplete model directory (it has no "
            f"{META_FILE}): refusing to replace it; choose a new or empty folder.")
    meta = meta or ModelMeta(context_size=model.config.max_position_embeddings)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size} embeddings")
    tensors = state_dict_to_hf(model, dtype)
    save_dtype = dtype or model.embed_tokens.weight.dtype
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        atomic_write_bytes(new / WEIGHTS_FILE, st_save(tensors, metadata={"format": "pt"}))
        atomic_write_text(new / TOKENIZER_FILE, tokenizer.to_str())
        atomic_write_text(new / META_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
        atomic_write_text(new / CONFIG_FILE, json.dumps(
            model.config.to_hf_dict(torch_dtype=dtype_name(save_dtype)), indent=2) + "\n")
        swap_in(new, path)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path


def replaceable_model_dir(path: Path) -> bool:
    """An empty folder, or one holding our codecomplete.json."""
    return path.is_dir() and (not any(path.iterdir()) or (path / META_FILE).is_file())


def swap_in(new: Path, path: Path) -> None:
    """Put the complete directory `new` at `path`: the old one's extra files are copied
    over (the originals stay until the end), the old one is renamed aside, and removed only
    after the new one is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    for extra in path.iterdir():
        if extra.name in MODEL_FILES or (new / extra.name).exists():
            continue
        if extra.is_dir() and not extra.is_symlink():
            shutil.copytree(extra, new / extra.name, symlinks=True)
        else:
            shutil.copy2(extra, new / extra.name, follow_symlinks=False)
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, old / path.name)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def state_dict_to_hf(model: Transformer, dtype: torch.dtype | None = None
                     ) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = t.detach().to("cpu")
        out[Transformer.hf_key(name)] = (t.to(dtype) if dtype else t).contiguous()
    return out


def load_model_dir(path: str | Path, device: str | torch.device = "auto",
                   dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load and check a model directory; raises ModelDirError naming the offending file."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist or is not a directory.")
    config = read_config(path)
    tokenizer_meta = read_meta(path)
    tokenizer = read_tokenizer(path, tokenizer_meta.fim)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelDirError(
            f"{path / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but {path / CONFIG_FILE} "
            f"declares vocab_size {config.vocab_size}: they do not belong together."
        )
    dev = device if isinstance(device, torch.device) else select_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else select_dtype(dev, dtype)
    model = Transformer(config)
    load_weights(model, path / WEIGHTS_FILE)
    model.to(device=dev, dtype=dt).eval()
    return LoadedModel(model, tokenizer, config, tokenizer_meta, path, dev, dt)


def read_config(path: Path) -> ModelConfig:
    f = path / CONFIG_FILE
    data = _read_json(f)
    try:
        return ModelConfig.from_hf_dict(data)
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{f} is not a usable Llama config: {e}.") from None


def read_meta(path: Path) -> ModelMeta:
    """codecomplete.json; when absent (a Llama code model from elsewhere) our default FIM
    token names are assumed and checked against the tokenizer."""
    f = path / META_FILE
    if not f.exists():
        return ModelMeta()
    try:
        return ModelMeta.from_dict(_read_json(f))
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{f} is invalid: {e}.") from None


def read_tokenizer(path: Path, fim: FimTokens) -> Tokenizer:
    f = path / TOKENIZER_FILE
    if not f.is_file():
        raise ModelDirError(f"{f} is missing: a model directory needs its tokenizer.")
    try:
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ModelDirError(f"{f} is not a valid tokenizers file ({_first_line(e)}).") from None
    try:
        return Tokenizer(hf, fim)
    except ValueError as e:
        raise ModelDirError(f"{f} does not fit {path / META_FILE}: {e}.") from None


def load_weights(model: Transformer, f: Path) -> None:
    """Copy safetensors weights into `model`, checking names and shapes."""
    if not f.is_file():
        raise ModelDirError(f"{f} is missing: a model directory needs its weights.")
    try:
        tensors = st_load(f.read_bytes())
    except (SafetensorError, ValueError, OSError, RuntimeError) as e:
        raise ModelDirError(f"{f} is corrupt or not a safetensors file ({_first_line(e)}).") \
            from None
    assign_weights(model, tensors, f)


def assign_weights(model: Transformer, tensors: dict[str, torch.Tensor], f: Path) -> None:
    """Copy HF-named tensors into `model` after checking names, shapes and dtypes; errors
    name `f`, where the tensors came from."""
    tensors = dict(tensors)
    expected = {Transformer.hf_key(k): v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelDirError(f"{f} does not match config.json: {'; '.join(detail)}.")
    for name, t in tensors.items():
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            raise ModelDirError(
                f"{f} tensor {name} has shape {tuple(t.shape)} but config.json implies {want}."
            )
        if not t.is_floating_point():
            raise ModelDirError(f"{f} tensor {name} has non-float dtype {t.dtype}.")
    state = {Transformer.from_hf_key(k): v for k, v in tensors.items()}
    model.load_state_dict(state, strict=False)


def _read_json(f: Path) -> dict[str, Any]:
    if not f.is_file():
        raise ModelDirError(f"{f} is missing.")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{f} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{f} must hold a JSON object, not {type(data).__name__}.")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
