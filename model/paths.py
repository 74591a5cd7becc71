"""Where the default model lives: the shipped directory, else the locally built stand-in."""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "default"


def cache_dir() -> Path:
    """$CODECOMPLETE_CACHE, else $XDG_CACHE_HOME/codecomplete, else ~/.cache/codecomplete."""
    if os.environ.get("CODECOMPLETE_CACHE"):
        return Path(os.environ["CODECOMPLETE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "codecomplete"


def standin_model_dir() -> Path:
    return cache_dir() / "standin-model"


def default_model_dir() -> Path | None:
    """The model `server` loads without --model, or None when there is none yet."""
    for d in (SHIPPED_MODEL_DIR, standin_model_dir()):
        if (d / "config.json").is_file():
            return d
    return None
