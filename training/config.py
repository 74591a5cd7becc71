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


def opt(default: Any, help: str) -> Any:
    """A TrainConfig field with its one-line meaning (shown by `training.train --help`)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    name: str = opt("", "run name: runs/NAME/ (empty: the preset's name)")
    data: str = opt("data/default", "a training.prepare output folder")
    runs_dir: str = opt("runs", "where run folders are made")
    # model (Llama; vocab comes from the data's tokenizer)
    hidden_size: int = opt(256, "model width")
    intermediate_size: int = opt(704, "SwiGLU hidden width")
    num_hidden_layers: int = opt(6, "decoder layers")
    num_attention_heads: int = opt(8, "query heads")
    num_key_value_heads: int = opt(4, "key/value heads (grouped-query attention)")
    tie_word_embeddings: bool = opt(True, "share the input embedding and the output head")
    rope_theta: float = opt(10000.0, "RoPE base")
    # data
    seq_len: int = opt(512, "tokens per training window (the model's context)")
    batch_size: int = opt(16, "sequences per micro-batch, per process")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    fim_rate: float = opt(0.5, "share of documents turned into fill-in-the-middle examples")
    spm_rate: float = opt(0.5, "share of FIM examples in SPM order (the rest PSM)")
    fim_level: str = opt("context", "context: FIM inside each packed window | document")
    fim_spans: str = opt("char", "where middles are cut: char (random characters) | line "
                                 "(the rest of a line, as editors ask) | mix (half each)")
    fim_ends: bool = opt(True, "context level: every FIM example ends with <|endoftext|> "
                               "inside its window (the suffix's tail gives way); false: "
                               "as the fifth and sixth sittings were trained")
    horizon_weight: float = opt(0.0, "weight of the horizon-length loss: a training-only "
                                     "head predicts how much of each FIM middle is left "
                                     "(training/horizon.py; 0: off)")
    prose_weight: float = opt(1.0, "loss weight of prose targets (comment text, docstrings: "
                                   "training/prose.py) against 1 for code; 1: all equal")
    repo_packing: bool = opt(False, "pack each repository's files together, each under its "
                                    "<file_sep>path header (needs data of format 2)")
    repo_rate: float = opt(0.0, "share of windows that start with a retrieval example: "
                                "similar windows of the repository's other files, then a FIM "
                                "example, as the server's repository context")
    repo_context_tokens: int = opt(256, "token budget of the retrieved context in those "
                                        "examples")
    repo_tries: int = opt(1, "cursors drawn per retrieval example; the first whose middle "
                             "the retrieved context holds is kept")
    # optimisation
    max_steps: int = opt(1000, "optimizer steps of the run")
    time_budget_min: float = opt(0.0, "wall-clock minutes of the run (0: no limit): it ends "
                                      "after max_steps or this, whichever comes first, and "
                                      "the schedule's decay is timed to end with it")
    optimizer: str = opt("adamw", "adamw | muon (Muon for 2-D hidden weights, AdamW rest)")
    lr: float = opt(3e-3, "peak AdamW learning rate")
    muon_lr: float = opt(0.02, "peak Muon learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a share of the peak")
    warmup_steps: int = opt(100, "linear warmup steps")
    schedule: str = opt("cosine", "cosine | wsd (warmup-stable-decay)")
    decay_fraction: float = opt(0.2, "wsd: share of steps spent decaying")
    weight_decay: float = opt(0.1, "decoupled weight decay")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient norm clip")
    # robustness
    nan_patience: int = opt(3, "consecutive non-finite steps before rolling back")
    rollback_lr_factor: float = opt(0.5, "learning-rate factor after each rollback")
    debug_nan_steps: list[int] = field(default_factory=list, metadata={
        "help": "tests: poison the loss at these steps (1,5,9)"})
    # bookkeeping
    eval_every: int = opt(250, "steps between validations (and best/ updates)")
    eval_batches: int = opt(16, "validation batches per evaluation")
    checkpoint_every: int = opt(250, "steps between checkpoints")
    keep_checkpoints: int = opt(2, "checkpoints kept (older ones are removed)")
    log_every: int = opt(10, "steps between progress lines and metrics")
    sample_every_eval: int = opt(3, "completions logged as text at each evaluation")
    seed: int = opt(0, "seed of the data order, FIM and initialisation")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto | bf16 | fp32 (autocast dtype)")
    compile: bool = opt(False, "torch.compile the model with its loss")
    threads: int = opt(0, "torch intra-op threads (0: torch's default)")
    export_dir: str = opt("", "export the best model directory here at the end")
    init_from: str = opt("", "start from these weights: a model directory or a training "
                             "checkpoint (fine-tuning, continuing a run)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_help() -> str:
    """Every setting as `--name VALUE  meaning (default: X)`, for --help."""
    rows = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        rows.append(f"  --{f.name.replace('_', '-'):<22} {f.metadata['help']} "
                    f"(default: {shown!r})")
    return "\n".join(rows)


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
