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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from tokenizers import Tokenizer as HFTokenizer

from model.atomic import atomic_write_bytes, atomic_write_text, make_temp_dir
from model.config import ModelConfig
from model.device import dtype_name, select_device, select_dtype
from model.families import (
    WEIGHTS_FILE,
    CheckpointFilesError,
    Item,
    our_tensors,
    read_tensors,
    weight_files,
)
from model.tokenizer import (
    FIM_FAMILIES,
    PSM,
    SPM,
    FimTokens,
    Tokenizer,
    detect_fim,
)
from model.transformer import Transformer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "codecomplete.json"
META_VERSION = 1
FOREIGN_CONTEXT = 2048     # the context served for a model without codecomplete.json


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
        named = d.get("fim", {})
        if isinstance(named, str):
            if named not in FIM_FAMILIES:
                raise ValueError(f"fim {named!r} is not one of {', '.join(FIM_FAMILIES)}")
            fim = FIM_FAMILIES[named]
        else:
            fim = FimTokens(**named)
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

    @property
    def context(self) -> int:
        """Tokens a prompt and its completion may span here: the model's own context, or
        less where codecomplete.json says so (a 32k-token model need not hold a 32k KV
        cache to complete a line)."""
        return min(self.config.max_position_embeddings, self.meta.context_size)


MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)


def save_model_dir(path: str | Path, model: Transformer, tokenizer: Tokenizer,
                   meta: ModelMeta | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a model directory at `path`, which must be new, empty or one of our model
    directories (it has codecomplete.json): anything else is refused with ModelDirError,
    so `--out ~/projects` never deletes a user's folder. The new directory is written
    beside the old one and swapped in, so a failed or killed export loses nothing; files
    of the old directory that are not model files (a user's notes) are copied into it."""
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
    new = make_temp_dir(f".{path.name}.new-", path.parent)
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
    old = make_temp_dir(f".{path.name}.old-", path.parent)
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
    hf = read_hf_tokenizer(path)
    tokenizer_meta = read_meta(path) or foreign_meta(path, hf, config)
    tokenizer = make_tokenizer(path, hf, tokenizer_meta.fim)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelDirError(
            f"{path / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but {path / CONFIG_FILE} "
            f"declares vocab_size {config.vocab_size}: they do not belong together."
        )
    dev = device if isinstance(device, torch.device) else select_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else select_dtype(dev, dtype)
    model = Transformer.empty(config, dev, dt)
    load_weights(model, path)
    model.eval()
    return LoadedModel(model, tokenizer, config, tokenizer_meta, path, dev, dt)


def read_config(path: Path) -> ModelConfig:
    f = path / CONFIG_FILE
    data = _read_json(f)
    try:
        return ModelConfig.from_hf_dict(data)
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{f} is not a usable Llama config: {e}.") from None


def read_meta(path: Path) -> ModelMeta | None:
    """codecomplete.json, or None when absent (a code model from elsewhere)."""
    f = path / META_FILE
    if not f.exists():
        return None
    try:
        return ModelMeta.from_dict(_read_json(f))
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{f} is invalid: {e}.") from None


def foreign_meta(path: Path, hf: HFTokenizer, config: ModelConfig) -> ModelMeta:
    """What codecomplete.json would say of a model directory from elsewhere: the FIM
    tokens of its family (found in its tokenizer), prefix-suffix-middle order as those
    families document, and a context of at most FOREIGN_CONTEXT tokens."""
    fim = detect_fim(hf)
    if fim is None:
        raise ModelDirError(
            f"{path / TOKENIZER_FILE} has the FIM tokens of none of the families codecomplete "
            f"knows ({', '.join(FIM_FAMILIES)}): name them in {path / META_FILE}.")
    return ModelMeta(fim=fim, fim_order=PSM,
                     context_size=min(config.max_position_embeddings, FOREIGN_CONTEXT),
                     provenance={"fim": "detected from the tokenizer"})


def read_hf_tokenizer(path: Path) -> HFTokenizer:
    f = path / TOKENIZER_FILE
    if not f.is_file():
        raise ModelDirError(f"{f} is missing: a model directory needs its tokenizer.")
    try:
        return HFTokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ModelDirError(f"{f} is not a valid tokenizers file ({_first_line(e)}).") from None


def make_tokenizer(path: Path, hf: HFTokenizer, fim: FimTokens) -> Tokenizer:
    try:
        return Tokenizer(hf, fim)
    except ValueError as e:
        raise ModelDirError(f"{path / TOKENIZER_FILE} does not fit {path / META_FILE}: {e}.") \
            from None


def load_weights(model: Transformer, path: Path) -> None:
    """Copy a model directory's weights into `model`, lazily, checking names and shapes."""
    try:
        files = weight_files(path)
        assign_tensors(model, our_tensors(model.config, read_tensors(files)), files[0])
    except CheckpointFilesError as e:
        raise ModelDirError(str(e)) from None


def assign_weights(model: Transformer, tensors: dict[str, torch.Tensor], f: Path) -> None:
    """Copy HF-named tensors (of our Llama layout) into `model`; errors name `f`."""
    assign_tensors(model, ((Transformer.from_hf_key(k), v, f, k) for k, v in tensors.items()),
                   f)


@torch.no_grad()
def assign_tensors(model: Transformer, items: Iterable[Item], where: Path) -> None:
    """Copy (our name, tensor, file, name there) items into `model` after checking each
    name, shape and dtype; every weight must be given. Errors name the file."""
    params = model.state_dict()
    tied = model.config.tie_word_embeddings
    expected = {n for n in params if not (tied and n == "lm_head.weight")}
    seen: set[str] = set()
    unexpected: list[str] = []
    for name, t, f, source in items:
        if tied and name == "lm_head.weight":
            continue
        if name not in params:
            unexpected.append(source)
            continue
        want = tuple(params[name].shape)
        if tuple(t.shape) != want:
            raise ModelDirError(
                f"{f} tensor {source} has shape {tuple(t.shape)} but config.json implies {want}.")
        if not t.is_floating_point():
            raise ModelDirError(f"{f} tensor {source} has non-float dtype {t.dtype}.")
        params[name].copy_(t)
        seen.add(name)
    missing = sorted(expected - seen)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelDirError(f"{where} does not match config.json: {'; '.join(detail)}.")


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
