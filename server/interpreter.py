"""Which Python the user's workspace runs, and where it finds modules.

The re-ranker reads the names of imported modules (server/modules.py). The server itself
usually runs from its own virtual environment, whose library versions need not be the
workspace's: a name list read there must not veto a name the user's version has. So the
workspace's interpreter is found, in this order, from
  1. the `python` setting (a path to an interpreter, or to an environment folder),
  2. a `.venv` or `venv` folder in a workspace folder,
  3. `VIRTUAL_ENV` in the server's environment (an editor started from an activated venv),
and its site-packages and standard library are searched first. Only the files are looked
at: nothing is run, not even the interpreter.

When none is found, the server's own interpreter is the best guess and is trusted.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

VENV_NAMES = (".venv", "venv")
RECHECK_S = 30.0


@dataclass(frozen=True)
class Interpreter:
    """Where an interpreter finds modules. `is_server`: it is the server's own, so
    `sys.path` and the modules already imported describe it."""

    paths: tuple[str, ...] = ()
    is_server: bool = True


SERVER = Interpreter()      # its paths are sys.path, read when searched


def workspace_interpreter(folders: tuple[str, ...], setting: str = "",
                          environ: Mapping[str, str] | None = None) -> Interpreter:
    """The interpreter of a workspace (see the module docstring); SERVER if none is found.
    Looked up again at most every RECHECK_S seconds (a request costs no file system work,
    and a `.venv` created meanwhile is noticed)."""
    environ = os.environ if environ is None else environ
    return _find(folders, setting, environ.get("VIRTUAL_ENV", ""),
                 int(time.monotonic() // RECHECK_S))


@lru_cache(maxsize=16)
def _find(folders: tuple[str, ...], setting: str, virtual_env: str, epoch: int) -> Interpreter:
    candidates = [setting] if setting else []
    candidates += [str(Path(f) / name) for f in folders for name in VENV_NAMES]
    candidates.append(virtual_env)
    for candidate in candidates:
        if not candidate:
            continue
        root = environment_root(Path(candidate).expanduser())
        dirs = library_dirs(root) if root is not None else []
        if dirs:
            return interpreter_at(root, dirs)
    return SERVER


def environment_root(path: Path) -> Path | None:
    """The environment folder of an interpreter path (`X/bin/python`, `X\\Scripts\\python.exe`)
    or an environment folder itself; None when there is no such folder."""
    try:
        if path.is_file() or (path.is_symlink() and not path.is_dir()):
            path = path.parent.parent if path.parent.name in ("bin", "Scripts") else path.parent
        return path if path.is_dir() else None
    except OSError:
        return None


def interpreter_at(root: Path, dirs: list[Path]) -> Interpreter:
    """The environment at `root`, whose library folders are `dirs`: SERVER when it is the
    server's own."""
    try:
        same = root.resolve() == Path(sys.prefix).resolve()
    except OSError:
        same = False
    return SERVER if same else Interpreter(paths=tuple(map(str, dirs)), is_server=False)


def library_dirs(prefix: Path) -> list[Path]:
    """site-packages and the standard library of the environment at `prefix` (none: no
    Python environment there): a venv's standard library is that of its base
    interpreter (`home` in pyvenv.cfg)."""
    out: list[Path] = []
    cfg = pyvenv_cfg(prefix)
    m = re.match(r"(\d+\.\d+)", cfg.get("version") or cfg.get("version_info") or "")
    version = m.group(1) if m else ""
    for lib in [*sorted(prefix.glob("lib/python3*")), prefix / "Lib"]:
        if (lib / "site-packages").is_dir():
            out.append(lib / "site-packages")
        if (lib / "os.py").is_file():
            out.append(lib)
            version = version or lib.name.removeprefix("python")
    home = Path(cfg["home"]) if cfg.get("home") else None
    if home is not None and version:
        for lib in (home.parent / "lib" / f"python{version}", home / "Lib"):
            if (lib / "os.py").is_file():
                out.append(lib)
    return out


def pyvenv_cfg(prefix: Path) -> dict[str, str]:
    """The key = value lines of a venv's pyvenv.cfg (keys lower-cased); {} if none."""
    try:
        text = (prefix / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip().lower(): v.strip() for k, v in pairs}
