"""Names that an imported module defines, found without running any of its code.

After `os.pa|` or `from json import du|` the name the user wants is an attribute of a
module the document imports, often one the document has not used yet, so neither the
document nor a small model's memory offers it. This module resolves the import lines of
the text before the cursor to modules of the server's Python environment and lists what
each one defines: `dir()` of a module the server process has already imported, otherwise
the top-level definitions, assignments and imports of its source file read with `ast`
(plus a package's submodules). Nothing is imported and no user code runs: modules are
found with `importlib.machinery.PathFinder`, which only looks at files.

Modules are looked up where the workspace's interpreter finds them (server/interpreter.py),
after the user's own folders. When that interpreter is not the server's, `dir()` of the
server's imported modules describes another installation and is not used, and a module
found only on the server's own path gives an open list (a hint, never a veto).

A name list is *closed* when it is all the module can have: source without a module
`__getattr__` or a star import, or `dir()` of an imported module, and found where the
workspace's interpreter looks. The re-ranker then drops
document names that the module cannot have (after `os.` the local variable `path_list`
is not a candidate); an open list only adds candidates.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import PathFinder
from pathlib import Path

from server.interpreter import SERVER, Interpreter

MAX_SOURCE_BYTES = 2_000_000       # larger module sources are not parsed
DOTTED = r"[^\W\d]\w*(?:\s*\.\s*[^\W\d]\w*)*"
IMPORT_LINE = re.compile(r"^[ \t]*import[ \t]+(.+)$", re.M)
FROM_LINE = re.compile(rf"^[ \t]*from[ \t]+({DOTTED})[ \t]+import[ \t]+\(?([^)#\n]*)", re.M)
RECEIVER_CHAIN = re.compile(rf"({DOTTED})\.$")
FROM_IMPORT_AT_END = re.compile(rf"^[ \t]*from[ \t]+({DOTTED})[ \t]+import[ \t]+\(?[\w \t,]*$")


@dataclass(frozen=True)
class ModuleNames:
    names: frozenset[str]
    closed: bool               # True: the module can have no other attributes


def import_bindings(text: str) -> dict[str, str]:
    """Local name -> module name for `import a.b`, `import a.b as c`, `from a import b`
    (kept when `a.b` turns out to be a module) in `text`."""
    out: dict[str, str] = {}
    for m in IMPORT_LINE.finditer(text):
        for part in m.group(1).split("#")[0].split(","):
            words = part.split()
            if len(words) == 3 and words[1] == "as":
                out[words[2]] = words[0]
            elif len(words) == 1 and words[0].replace(".", "").replace("_", "").isalnum():
                out[words[0].split(".")[0]] = words[0].split(".")[0]
    for m in FROM_LINE.finditer(text):
        base = re.sub(r"\s", "", m.group(1))
        for part in m.group(2).split(","):
            words = part.split()
            if len(words) == 3 and words[1] == "as":
                out[words[2]] = f"{base}.{words[0]}"
            elif len(words) == 1:
                out[words[0]] = f"{base}.{words[0]}"
    return out


def module_for_receiver(before: str, search: tuple[str, ...] | None = None) -> str | None:
    """The module that `before` (the text up to the partly typed name) ends with a dot
    after, e.g. `os.path.` -> "os.path" when the document imports os; None otherwise."""
    m = RECEIVER_CHAIN.search(before[-300:])
    if not m:
        return None
    chain = re.sub(r"\s", "", m.group(1)).split(".")
    bound = import_bindings(before).get(chain[0])
    if bound is None:
        return None
    name = ".".join([bound, *chain[1:]])
    return name if module_file(name, search) is not None or name in sys.modules else None


def module_for_from_import(before: str) -> str | None:
    """The module of a `from X import ` line that the cursor is typing a name of."""
    line = before[before.rfind("\n") + 1:]
    m = FROM_IMPORT_AT_END.match(line)
    return re.sub(r"\s", "", m.group(1)) if m else None


def search_path(roots: tuple[str, ...], interpreter: Interpreter) -> tuple[str, ...]:
    """Where the workspace finds modules: the user's folders, then its interpreter's."""
    return (*roots, *(sys.path if interpreter.is_server else interpreter.paths))


@lru_cache(maxsize=512)
def module_file(name: str, search: tuple[str, ...] | None = None) -> Path | None:
    """The source file (or package `__init__.py`) of a module, found in the folders of
    `search` (default: the server's sys.path) without importing anything; None for
    unknown, relative or compiled modules."""
    if not name or name.startswith("."):
        return None
    path: list[str] | None = list(sys.path if search is None else search)
    spec = None
    try:
        for part in name.split("."):
            spec = PathFinder.find_spec(part, path)
            if spec is None:
                return None
            path = list(spec.submodule_search_locations or [])
    except (ImportError, ValueError, OSError):
        return None
    origin = spec.origin if spec else None
    return Path(origin) if origin and origin.endswith(".py") else None


def names_of(name: str, roots: tuple[str, ...] = (),
             interpreter: Interpreter = SERVER) -> ModuleNames | None:
    """What module `name` defines, or None when it cannot be found."""
    path = module_file(name, search_path(roots, interpreter))
    parsed = parsed_names(path)
    if not interpreter.is_server:
        if path is not None:
            return parsed
        # Only the server's installation has it: a hint, not all the module can have.
        elsewhere = parsed_names(module_file(name))
        return ModuleNames(elsewhere.names, closed=False) if elsewhere else None
    loaded = sys.modules.get(name)
    if loaded is not None and not hasattr(loaded, "__getattr__"):
        # dir() has what the module made at run time; the file adds unimported submodules.
        return ModuleNames(frozenset(dir(loaded)) | (parsed.names if parsed else frozenset()),
                           closed=True)
    return parsed


def parsed_names(path: Path | None) -> ModuleNames | None:
    if path is None:
        return None
    try:
        stat = path.stat()
        return _parse(path, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None


@lru_cache(maxsize=64)
def _parse(path: Path, mtime_ns: int, size: int) -> ModuleNames | None:
    """Top-level names of a module source (cached by file version)."""
    if size > MAX_SOURCE_BYTES:
        return None
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    names: set[str] = set()
    closed = True
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    closed = False
                else:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):     # conditional definitions
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    if "__getattr__" in names:
        closed = False
    if path.name == "__init__.py":                             # submodules and subpackages
        try:
            for child in path.parent.iterdir():
                if child.suffix == ".py" and child.stem != "__init__":
                    names.add(child.stem)
                elif (child / "__init__.py").is_file():
                    names.add(child.name)
        except OSError:
            closed = False
    return ModuleNames(frozenset(names), closed)


def module_names_at(before: str, roots: tuple[str, ...] = (),
                    interpreter: Interpreter = SERVER) -> ModuleNames | None:
    """The names available where the cursor types an attribute of an imported module or a
    name in a `from X import` line; None elsewhere. `roots` are folders searched first
    (the document's own and the editor's workspace folders), then where `interpreter`
    finds modules."""
    try:
        search = search_path(roots, interpreter)
        module = module_for_from_import(before) or (
            module_for_receiver(before, search)
            or (None if interpreter.is_server else module_for_receiver(before)))
        return names_of(module, roots, interpreter) if module else None
    except Exception:       # a best-effort hint: a module with an odd __dir__ costs nothing
        return None
