"""Training checkpoints: written atomically, resumed exactly, refused clearly when corrupt.

Layout under `runs/NAME/checkpoints/`:
    step_0000500/model.safetensors   weights (safetensors, the model directory's names)
    step_0000500/state.pt            optimizer state, step, data position, RNG, counters
    latest.json                      {"step": 500, "dir": "step_0000500"}

A checkpoint is written into a hidden temp folder, every file fsync'd, the folder renamed
into place, and only then `latest.json` is replaced (itself atomically). A process killed
at any moment leaves the previous checkpoint intact and `latest.json` pointing at it.
`state.pt` holds only tensors and plain containers and is read with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.atomic import atomic_write_text
from model.checkpoint import ModelDirError, assign_weights, state_dict_to_hf
from model.transformer import Transformer

LATEST = "latest.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file."""


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, step: int, model: Transformer, state: dict[str, Any],
                    keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = folder / name
    tmp = folder / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = state_dict_to_hf(model)
    (tmp / WEIGHTS).write_bytes(st_save(weights))
    buf = io.BytesIO()
    torch.save({"step": step, **state}, buf)
    (tmp / STATE).write_bytes(buf.getvalue())
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(folder / LATEST, json.dumps({"step": step, "dir": name}) + "\n")
    _prune(folder, keep, protect=name)
    return final


def _prune(folder: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    f = folder / LATEST
    if not f.exists():
        return None
    try:
        info = json.loads(f.read_text())
        return folder / info["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{f} is corrupt; delete it to resume from the newest "
                              "step_* folder by hand, or start afresh.") from None


def load_checkpoint(path: Path) -> Checkpoint:
    wf, sf = path / WEIGHTS, path / STATE
    for f in (wf, sf):
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing.")
    try:
        weights = st_load(wf.read_bytes())
    except (SafetensorError, ValueError, OSError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint weights {wf} are corrupt ({_first(e)}).") from None
    try:
        state = torch.load(io.BytesIO(sf.read_bytes()), weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types for bad pickles/zips
        raise CheckpointError(f"checkpoint state {sf} is corrupt ({_first(e)}).") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint state {sf} is not a codecomplete training state.")
    return Checkpoint(int(state["step"]), weights, state, path)


def apply_weights(model: Transformer, ckpt: Checkpoint) -> None:
    try:
        assign_weights(model, ckpt.weights, ckpt.path / WEIGHTS)
    except ModelDirError as e:
        raise CheckpointError(f"checkpoint {e}") from None


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def write_metrics_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

