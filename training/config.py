"""Training configuration: one dataclass with defaults, filled from a TOML preset and then
from `--name value` command-line overrides. The field names are the TOML keys and the flags.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    name: str = ""                 # run name; runs/NAME/ (default: the preset's name)
    data: str = "data/default"     # a `training.prepare` output folder
    runs_dir: str = "runs"
    # model (Llama; vocab comes from the data's tokenizer)
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    # data
    seq_len: int = 512
    batch_size: int = 16           # sequences per micro-batch, per process
    grad_accum: int = 1
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    fim_level: str = "context"     # context: FIM inside each packed window | document
    # optimisation
    max_steps: int = 1000
    optimizer: str = "adamw"       # adamw | muon (Muon for 2-D hidden weights, AdamW rest)
    lr: float = 3e-3
    muon_lr: float = 0.02
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"       # cosine | wsd (warmup-stable-decay)
    decay_fraction: float = 0.2    # wsd: share of steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # robustness
    nan_patience: int = 3          # consecutive bad steps before rolling back
    rollback_lr_factor: float = 0.5
    debug_nan_steps: list[int] = field(default_factory=list)  # tests: poison these steps
    # bookkeeping
    eval_every: int = 250
    eval_batches: int = 16
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every_eval: int = 3     # completions logged as text at each eval
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"            # auto | bf16 | fp32 (autocast dtype)
    compile: bool = False
    threads: int = 0               # torch intra-op threads (0: torch's default)
    export_dir: str = ""           # where the best checkpoint is exported at the end
    init_from: str = ""            # start from these weights: a model directory or a
    #                                training checkpoint (fine-tuning, continuing a run)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(preset_or_toml: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """A preset name (`cpu-tiny`) or a TOML path, then string overrides from the CLI."""
    path = Path(preset_or_toml)
    if path.suffix != ".toml":
        path = PRESET_DIR / f"{preset_or_toml}.toml"
        if not path.exists():
            raise ValueError(f"unknown preset {preset_or_toml!r}; presets: "
                             f"{', '.join(preset_names())}, or give a .toml file.")
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read training config {path}: {e}.") from None
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key in values:
        if key not in known:
            raise ValueError(f"{path}: unknown setting {key!r}.")
    values.setdefault("name", path.stem)
    for key, raw in (overrides or {}).items():
        key = key.replace("-", "_")
        if key not in known:
            raise ValueError(f"unknown setting --{key.replace('_', '-')}.")
        values[key] = _parse(raw, type(getattr(TrainConfig(), key)), key)
    return TrainConfig(**values)


def _parse(raw: str, kind: type, key: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is list:
            return [int(x) for x in raw.split(",") if x]
        return kind(raw)
    except ValueError:
        raise ValueError(f"--{key.replace('_', '-')} {raw!r} is not a valid "
                         f"{kind.__name__}.") from None
