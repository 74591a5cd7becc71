"""Names of imported modules for the identifier re-ranker: found without running code."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from server import identifiers, interpreter, modules


@pytest.fixture
def package_on_path(tmp_path, monkeypatch):
    """A package whose code would fail loudly if anything imported it."""
    pkg = tmp_path / "boobytrap"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise SystemExit('imported!')\n"
        "def open_door(): ...\n"
        "class Keeper: ...\n"
        "LIMIT: int = 3\n"
        "try:\n    from json import loads as parse_json\nexcept ImportError:\n    pass\n"
        "if LIMIT:\n    lever = 1\n")
    (pkg / "traps.py").write_text("from os.path import *\nspring = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules.module_file.cache_clear()
    yield "boobytrap"
    modules.module_file.cache_clear()


def test_import_bindings():
    text = ("import os\nimport numpy as np, json  # comment\n"
            "from collections import abc as cabc, OrderedDict\n"
            "import xml.etree.ElementTree as ET\nfrom pkg.sub import (a, b\n")
    assert modules.import_bindings(text) == {
        "os": "os", "np": "numpy", "json": "json", "ET": "xml.etree.ElementTree",
        "cabc": "collections.abc", "OrderedDict": "collections.OrderedDict",
        "a": "pkg.sub.a", "b": "pkg.sub.b"}


def test_source_names_without_importing(package_on_path):
    names = modules.names_of(package_on_path)
    assert package_on_path not in sys.modules                 # nothing was run
    assert names.closed
    assert {"open_door", "Keeper", "LIMIT", "parse_json", "lever", "traps", "sub"} \
        <= names.names
    traps = modules.names_of(f"{package_on_path}.traps")
    assert "spring" in traps.names and not traps.closed        # a star import: open
    assert modules.names_of("no_such_module_anywhere") is None
    assert modules.module_file(".relative") is None


def test_receiver_and_from_import_positions(package_on_path):
    doc = "import boobytrap as bt\nimport os\nvalue = bt."
    assert modules.module_for_receiver(doc) == "boobytrap"
    assert modules.module_for_receiver("import os\nx = os.path.") == "os.path"
    assert modules.module_for_receiver("value = bt.") is None          # not imported
    assert modules.module_for_receiver("import os\nx = y.") is None
    assert modules.module_for_from_import("from boobytrap import Keeper, ") == "boobytrap"
    assert modules.module_for_from_import("from boobytrap import (") == "boobytrap"
    assert modules.module_for_from_import("x = 1") is None
    assert "open_door" in modules.module_names_at("from boobytrap import ").names


def test_candidates_after_a_module_keep_only_its_names(package_on_path):
    prefix = "import boobytrap\nopen_file = 1\nopen_file += 1\nboobytrap.op"
    counts = identifiers.name_counts(prefix, "", "op")
    plain = identifiers.candidates(counts, "op")
    assert plain[0] == "open_file" and "open" in plain          # document names, builtins
    members = modules.module_names_at(prefix[:-2])
    assert identifiers.candidates(counts, "op", members) == ["open_door"]
    # An open list (star import) adds names but drops none of the document's.
    open_list = modules.ModuleNames(frozenset({"opus"}), closed=False)
    assert identifiers.candidates(Counter({"open_file": 2}), "op", open_list) == \
        ["open_file", "opus"]


def test_user_folders_are_searched_first(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "localmod.py").write_text("def only_here(): ...\n")
    assert modules.module_names_at("import localmod\nx = localmod.") is None
    names = modules.module_names_at("import localmod\nx = localmod.", (str(project),))
    assert names.names == {"only_here"} and names.closed


def make_venv(root, version: str = "3.99", home=None) -> str:
    """A virtual environment's files (no interpreter runs): site-packages and pyvenv.cfg."""
    site = root / "lib" / f"python{version}" / "site-packages"
    site.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text("")
    cfg = f"version = {version}.1\n" + (f"home = {home}\n" if home else "")
    (root / "pyvenv.cfg").write_text(cfg)
    return str(site)


def test_workspace_interpreter_is_found_from_setting_folder_or_virtual_env(tmp_path):
    ws, other, env = tmp_path / "ws", tmp_path / "other", tmp_path / "env"
    ws.mkdir()
    site_ws = make_venv(ws / ".venv")
    site_other = make_venv(other / "venv")
    site_env = make_venv(env)
    find = interpreter._find
    assert find((str(ws),), "", "", 0).paths[0] == site_ws
    assert find((str(other),), "", "", 0).paths[0] == site_other
    assert find((), "", str(env), 0).paths[0] == site_env
    setting = str(env / "bin" / "python")                       # an interpreter path
    assert find((str(ws),), setting, "", 0).paths[0] == site_env   # the setting wins
    assert find((str(ws),), str(tmp_path / "nothing"), "", 0).paths[0] == site_ws
    assert find((str(tmp_path),), "", "", 0) is interpreter.SERVER
    assert not find((str(ws),), "", "", 0).is_server
    # The server's own environment is recognised as such.
    assert interpreter.interpreter_at(Path(sys.prefix), []) is interpreter.SERVER


def test_a_venv_finds_its_base_standard_library(tmp_path):
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "lib" / "python3.99").mkdir(parents=True)
    (base / "lib" / "python3.99" / "os.py").write_text("sep = '/'\n")
    make_venv(tmp_path / "ws" / ".venv", home=base / "bin")
    found = interpreter._find((str(tmp_path / "ws"),), "", "", 0)
    assert str(base / "lib" / "python3.99") in found.paths


def test_names_come_from_the_workspace_interpreter_and_others_never_veto(
        tmp_path, monkeypatch):
    """The server's environment has fancylib 1 (old_api); the workspace's has fancylib 2
    (new_api). After `fancylib.` the workspace's names count, and a module that only the
    server's environment has gives an open list."""
    server_site = tmp_path / "server-site"
    (server_site / "fancylib").mkdir(parents=True)
    (server_site / "fancylib" / "__init__.py").write_text("def old_api(): ...\n")
    (server_site / "serveronly.py").write_text("def helper(): ...\n")
    monkeypatch.syspath_prepend(str(server_site))
    modules.module_file.cache_clear()
    ws = tmp_path / "ws"
    site = Path(make_venv(ws / ".venv"))
    (site / "fancylib").mkdir()
    (site / "fancylib" / "__init__.py").write_text("def new_api(): ...\n")
    theirs = interpreter._find((str(ws),), "", "", 0)
    prefix = "import fancylib\nimport serveronly\nfancylib."
    mine = modules.module_names_at(prefix)
    assert mine.names == {"old_api"} and mine.closed        # the server's own view
    names = modules.module_names_at(prefix, (), theirs)
    assert names.names == {"new_api"} and names.closed
    only = modules.module_names_at("import serveronly\nserveronly.", (), theirs)
    assert only.names == {"helper"} and not only.closed       # a hint, not a veto
    # dir() of a module the server imported describes the server's installation only.
    assert not modules.module_names_at("import json\njson.", (), theirs).closed
    modules.module_file.cache_clear()
